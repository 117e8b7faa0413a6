"""Fixtures only the serve tests share (the engines every layer shares are in tests/conftest.py)."""
from __future__ import annotations

import pytest
from shared_builds import shared_build


@pytest.fixture(scope="session")
def eraser_engine_dir(erasers):
    """The tiny LaMa eraser's engine directory (tests/support/eraser_models.py, built once per run, read-only)."""
    return erasers["lama"]


@pytest.fixture(scope="session")
def sam_engine_dir(tmp_path_factory):
    """A tiny random-weight Segment Anything engine directory (tests/support/sam_engines.py), built once per run."""
    from sam_engines import build_sam_engine

    return shared_build(tmp_path_factory, "sam-engine", lambda root: build_sam_engine(root / "sam"))


@pytest.fixture(scope="session")
def clipseg_engine_dir(tmp_path_factory):
    """A tiny random-weight CLIPSeg engine directory (tests/support/clipseg_models.py), built once per run."""
    from clipseg_models import save_tiny_clipseg

    from inpaintrt.export.segment_clipseg import export_clipseg

    return shared_build(tmp_path_factory, "clipseg-engine", lambda root: export_clipseg(
        save_tiny_clipseg(root / "clipseg-checkpoint"), root / "clipseg", log=lambda *_: None))
