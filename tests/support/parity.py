"""The worst difference from diffusers seen per measure: tests `record` them, and conftest.py's terminal summary
prints PARITY after the run."""
from __future__ import annotations

PARITY: dict[str, float] = {}  # measure -> worst value seen, printed after the run


def record(measure: str, value: float) -> float:
    PARITY[measure] = max(PARITY.get(measure, 0.0), float(value))
    return value
