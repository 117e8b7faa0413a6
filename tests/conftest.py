"""Shared fixtures and hooks: tiny random Stable Diffusion checkpoints and their exported engines, built once per
run, the xdist scheduler and the markers. The tests' helper modules live in tests/support (put on sys.path here,
so tests import them by name: `from pictures import sample_image`); the tests themselves are in one folder per
layer (runtime, engine, export, serve, gpu)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from parity import PARITY  # noqa: E402
from shared_builds import shared_build  # noqa: E402
from toolchain import versions_line  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(versions_line())  # a failing run on some machine says what it had
    if PARITY:
        terminalreporter.write_line("parity with diffusers (worst over the tests that ran):")
        for measure, value in sorted(PARITY.items()):
            terminalreporter.write_line(f"  {measure}: {value:.2e}")


# Test files that must not run beside each other under pytest-xdist: each starts a local Ray cluster. Matched by
# the file's name (its stem starts with a prefix), whichever folder holds it (tests/serve/test_serve_ray*.py).
ONE_WORKER_GROUPS = {"ray": ("test_serve_ray",)}


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: the workers already fill the cores
        os.environ.setdefault("INPAINTRT_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
    for marker, text in (("gpu", "needs a CUDA GPU"), ("tensorrt", "needs TensorRT"), ("slow", "full-size models")):
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist, each test file runs whole on one worker (its module fixtures are built once, its
    tests keep their order), and the files of a ONE_WORKER_GROUPS group one after another on one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::")[0]
            stem = Path(file).stem
            return next((name for name, prefixes in ONE_WORKER_GROUPS.items() if stem.startswith(prefixes)), file)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """`tensorrt` tests run only where TensorRT, cupy and a GPU are usable; elsewhere they skip, saying why."""
    from inpaintrt.engine.backends import BackendError, load_tensorrt

    try:
        load_tensorrt()
        return
    except BackendError as e:
        reason = str(e).split(";")[0]
    for item in items:
        if "tensorrt" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{in_channels: saved diffusers folder} for a 9-channel and a 4-channel tiny model."""
    from inpaintrt.export.random_models import save_pipeline

    return shared_build(tmp_path_factory, "checkpoints", lambda root: {
        ch: save_pipeline(root / f"tiny{ch}", size="tiny", in_channels=ch, seed=ch) for ch in (9, 4)})


@pytest.fixture(scope="session")
def engines(checkpoints, tmp_path_factory):
    """{in_channels: exported engine directory}."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    return shared_build(tmp_path_factory, "engines", lambda root: {
        ch: export_engine(load_pipeline(str(path)), root / f"engine{ch}", log=lambda *_: None)
        for ch, path in checkpoints.items()})


@pytest.fixture(scope="session")
def fp16_engines(checkpoints, tmp_path_factory):
    """{in_channels: the same checkpoints exported with fp16 and CUDA graphs} (read-only: copy to change)."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    return shared_build(tmp_path_factory, "fp16-engines", lambda root: {
        ch: export_engine(load_pipeline(str(path)), root / f"engine{ch}", fp16=True, log=lambda *_: None)
        for ch, path in checkpoints.items()})


@pytest.fixture(scope="session")
def pipes(checkpoints):
    from inpaintrt.export.loading import load_pipeline

    return {ch: load_pipeline(str(path)) for ch, path in checkpoints.items()}


@pytest.fixture(scope="session")
def engine_dir(engines):
    """The tiny 9-channel engine's directory: what the API, server and bad-input tests run."""
    return engines[9]


@pytest.fixture(scope="session")
def engine(engine_dir):
    from inpaintrt import Engine

    return Engine.load(engine_dir)


SDXL_MODELS = {"inpaint": ("sdxl", 9), "base": ("sdxl", 4), "refiner": ("sdxl-refiner", 4)}


@pytest.fixture(scope="session")
def sdxl_checkpoints(tmp_path_factory):
    """{"inpaint" (9-channel), "base" (4-channel), "refiner" (one text encoder, aesthetic score): folder}."""
    from inpaintrt.export.random_models import save_pipeline

    return shared_build(tmp_path_factory, "sdxl-checkpoints", lambda root: {
        name: save_pipeline(root / name, family=family, in_channels=ch, seed=10 + ch + len(name))
        for name, (family, ch) in SDXL_MODELS.items()})


@pytest.fixture(scope="session")
def sdxl_engines(sdxl_checkpoints, tmp_path_factory):
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    return shared_build(tmp_path_factory, "sdxl-engines", lambda root: {
        name: export_engine(load_pipeline(str(path)), root / name, log=lambda *_: None)
        for name, path in sdxl_checkpoints.items()})


@pytest.fixture(scope="session")
def sdxl_pipes(sdxl_checkpoints):
    from inpaintrt.export.loading import load_pipeline

    return {name: load_pipeline(str(path)) for name, path in sdxl_checkpoints.items()}


@pytest.fixture(scope="session")
def controlnet_exported(checkpoints, tmp_path_factory):
    """The ControlNet test engines, exported once for every ControlNet test file."""
    from controlnet_helpers import controlnet_engines

    return shared_build(tmp_path_factory, "controlnet-engines", lambda root: controlnet_engines(checkpoints, root))


@pytest.fixture(scope="session")
def kandinsky(tmp_path_factory):
    """Kandinsky 2.2: tiny checkpoints, engines with and without the prior, diffusers' pipelines."""
    from kandinsky_helpers import kandinsky_setup

    return kandinsky_setup(tmp_path_factory)


@pytest.fixture(scope="session")
def erasers(tmp_path_factory):
    """Tiny LaMa and MI-GAN: their checkpoints in the official formats and the engine directories from them."""
    from eraser_models import build_erasers

    return shared_build(tmp_path_factory, "erasers", build_erasers)


@pytest.fixture(scope="module")
def lpw():
    """diffusers' community lpw_stable_diffusion.py, the file named by $LPW_STABLE_DIFFUSION (skipped without it):
    the prompt-syntax tests of tests/runtime (its parser) and tests/engine (its embeddings) compare with it."""
    import importlib.util

    path = os.environ.get("LPW_STABLE_DIFFUSION")
    if not path:
        pytest.skip("set LPW_STABLE_DIFFUSION to diffusers' examples/community/lpw_stable_diffusion.py")
    spec = importlib.util.spec_from_file_location("lpw_stable_diffusion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
