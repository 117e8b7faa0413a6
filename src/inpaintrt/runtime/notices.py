"""Warnings a caller may want as data: each is issued with warnings.warn as before and, inside
`collect()`, also kept in that thread's list (the server returns them with the job's result).
warnings.catch_warnings would do it for one thread only: it swaps process-wide state."""
from __future__ import annotations

import contextlib
import contextvars
import warnings

_collected: contextvars.ContextVar[list | None] = contextvars.ContextVar("inpaintrt_notices", default=None)


def warn(message: str, stacklevel: int = 1) -> None:
    warnings.warn(message, stacklevel=stacklevel + 1)
    found = _collected.get()
    if found is not None:
        found.append(message)


@contextlib.contextmanager
def collect():
    """The notices issued in this block (in this thread or context), as a list filled while it runs."""
    found: list[str] = []
    token = _collected.set(found)
    try:
        yield found
    finally:
        _collected.reset(token)
