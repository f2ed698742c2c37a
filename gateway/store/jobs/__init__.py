"""The store's write jobs by area, each a function ``job(tx, *args)`` run on the writer
thread in a batch (see ``gateway/store/engine.py`` and ``gateway/store/jobs/tx.py``)."""

from __future__ import annotations
