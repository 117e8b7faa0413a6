"""The development toolchain: requirements/dev.lock (written by `make lock`) against pyproject's extras and
the environment the suite runs in."""
from __future__ import annotations

import platform
import re
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "dev.lock"
# the packages a failing run's one line names
SHOWN = ("torch", "diffusers", "transformers", "onnxruntime", "onnx", "openvino", "numpy", "ray", "fastapi")
# installed beside the lock on purpose: the project itself (editable) and the Makefile's --no-deps installs (CLIP's
# vocabulary, segment-anything as a test reference, IOPaint's page)
NOT_LOCKED = {"inpaintrt", "clip-anytorch", "segment-anything", "iopaint"}
# what a GPU machine adds with the trt / cuda extras (outside the development lock)
GPU_PREFIXES = ("nvidia-", "cupy-", "tensorrt", "onnxruntime-gpu", "fastrlock")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """{package: exact version} of the lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    """{package: version} of this environment's site-packages (not the packages a library vendors and puts on
    sys.path, as setuptools does), torch's local label (+cpu) dropped as the lock drops it."""
    paths = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    found = {}
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version.split("+")[0])
    return found


def dev_extras() -> list[str]:
    """The extras `make` installs, read from the Makefile's DEV_EXTRAS."""
    match = re.search(r"^DEV_EXTRAS := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return match.group(1).split(",")


def declared() -> list[str]:
    """pyproject's requirements for the runtime and the development extras."""
    import tomllib  # Python 3.11, as the lock is; imported here so the suite still collects on 3.10

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return list(project["dependencies"]) + [req for extra in dev_extras() for req in extras[extra]]


def versions_line() -> str:
    have = installed()
    shown = ", ".join(f"{name} {have.get(name, 'missing')}" for name in SHOWN)
    drift = sorted(name for name, version in locked().items() if have.get(name) != version)
    state = "as locked" if not drift else f"NOT as locked ({len(drift)} differ: {', '.join(drift[:5])})"
    return f"versions: python {platform.python_version()}, {shown}; requirements/dev.lock: {state}"
