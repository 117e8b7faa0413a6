"""Fixtures only the serve tests share (the engines every layer shares are in tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def eraser_engine_dir(erasers):
    """The tiny LaMa eraser's engine directory (tests/support/eraser_models.py, built once per run, read-only)."""
    return erasers["lama"]
