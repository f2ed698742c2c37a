"""The whole omnirelay error hierarchy, translated once at each boundary.

::

    OmnirelayError                 code, http status, message
    ├─ ConfigError                 bad TOML, missing secret: exit 78 (EX_CONFIG)
    ├─ AdapterError                .channel_type, .account
    │  ├─ AdapterNotReady          transient at start: the supervisor retries
    │  ├─ AdapterAuthError         credentials rejected
    │  ├─ AdapterConfigError       cannot work as configured
    │  └─ SendError                .provider_code, .provider_message
    │     ├─ RetryableSendError    .retry_after (429, 5xx, timeouts)
    │     └─ PermanentSendError    invalid recipient, blocked: the outbox marks failed
    ├─ InboundRejected             4xx, nothing stored
    │  ├─ SignatureInvalid         401
    │  ├─ PayloadTooLarge          413
    │  └─ MalformedPayload         400
    ├─ ValidationFailed            422
    ├─ NotFound                    404
    ├─ Conflict                    409
    ├─ Unauthorized / Forbidden    401 / 403
    └─ StoreError                  503: the store cannot write; never leaks driver types
"""

from __future__ import annotations

from typing import Any, ClassVar

from normalizer.errors import InvalidInput, MalformedInput


class OmnirelayError(Exception):
    """Something went wrong in omnirelay."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = details
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """Return the contract's error body."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigError(OmnirelayError):
    """The configuration is invalid."""

    code = "config_error"

    def __init__(
        self, message: str, *, key: str | None = None, line: int | None = None, hint: str = ""
    ) -> None:
        super().__init__(message)
        self.key = key
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = self.key or "config"
        if self.line:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" — hint: {self.hint}"
        return text


class ConfigErrors(OmnirelayError):
    """Several configuration errors, reported together."""

    code = "config_error"

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class AdapterError(OmnirelayError):
    """A channel adapter failed."""

    code = "adapter_error"

    def __init__(
        self, message: str | None = None, *, channel_type: str = "", account: str = ""
    ) -> None:
        super().__init__(message)
        self.channel_type = channel_type  # the adapter type, ``[[channels]] type``
        self.account = account


class AdapterNotReady(AdapterError):
    """The adapter could not start yet; it will be retried."""

    code = "adapter_not_ready"


class AdapterAuthError(AdapterError):
    """The provider rejected the adapter's credentials."""

    code = "adapter_auth_error"


class AdapterConfigError(AdapterError):
    """The adapter cannot work as configured."""

    code = "adapter_config_error"


class SendError(OmnirelayError):
    """Sending a message through a provider failed."""

    code = "send_failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        provider_code: str | None = None,
        provider_message: str | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message or provider_message)
        self.provider_code = provider_code
        self.provider_message = provider_message
        if error_code:
            self.code = error_code  # type: ignore[misc]  # per-instance refinement


class RetryableSendError(SendError):
    """A transient send failure (rate limit, 5xx, timeout): try again later."""

    code = "provider_unavailable"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """The provider refused the message for good."""

    code = "provider_rejected"


class InboundRejected(OmnirelayError):
    """An inbound request was refused; nothing was stored."""

    code = "bad_request"
    status = 400


class SignatureInvalid(InboundRejected):
    """The request signature is missing or wrong."""

    code = "invalid_signature"
    status = 401


class PayloadTooLarge(InboundRejected):
    """The request body is larger than allowed."""

    code = "payload_too_large"
    status = 413


class MalformedPayload(InboundRejected):
    """The request body could not be parsed."""

    code = "malformed_payload"
    status = 400


class ValidationFailed(OmnirelayError):
    """The request is well-formed but its content is invalid."""

    code = "validation_failed"
    status = 422


class BadRequest(OmnirelayError):
    """A query parameter or header is invalid."""

    code = "bad_request"
    status = 400


class NotFound(OmnirelayError):
    """The resource does not exist."""

    code = "not_found"
    status = 404


class Conflict(OmnirelayError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409


class Unauthorized(OmnirelayError):
    """Missing or invalid credentials."""

    code = "unauthorized"
    status = 401


class Forbidden(OmnirelayError):
    """The credentials do not grant this."""

    code = "forbidden"
    status = 403


class StoreError(OmnirelayError):
    """The store cannot serve the request right now."""

    code = "store_unavailable"
    status = 503


def from_invalid_input(exc: InvalidInput) -> InboundRejected | ValidationFailed:
    """The answer to input the normalizer refused: 400 for the wrong shape, else 422."""
    if isinstance(exc, MalformedInput):
        return MalformedPayload(str(exc))
    return ValidationFailed(str(exc))
