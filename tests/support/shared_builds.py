"""Folders built once per test run and shared by every pytest-xdist worker: the first worker to ask builds
under a file lock, the others wait and read it. Shared folders are read-only to the tests (a test that
changes an engine or checkpoint copies it first)."""
from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable


def run_root(tmp_path_factory) -> Path:
    """This run's folder for all workers (xdist's per-worker base temps share one parent; without xdist, the
    base temp is this run's own, so nothing from an earlier run is ever reused)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"
    root.mkdir(exist_ok=True)
    return root


def shared_build(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """build(folder) writes into folder and returns a picklable description (paths); built once per run."""
    root = run_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died mid-build left it half-written
            folder.mkdir()
            done.write_bytes(pickle.dumps(build(folder)))
        return pickle.loads(done.read_bytes())
