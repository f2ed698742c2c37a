"""What the normalizer raises for input it cannot turn into a message.

The normalizer knows no HTTP statuses and imports nothing of the gateway: the caller at
the boundary (the API channel's hook, the reply handler) translates these with
:func:`gateway.errors.from_invalid_input` into the answer its client gets.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """A field that breaks the payload's rules (the message says which and why): 422."""


class MalformedInput(InvalidInput):
    """Not even the expected shape, such as a body that is not a JSON object: 400."""
