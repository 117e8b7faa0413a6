"""Run a snippet in a fresh interpreter where torch, diffusers and transformers cannot be imported."""
from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
for name in ("torch", "diffusers", "transformers", "segment_anything"):
    sys.modules[name] = None  # any import of them now raises ImportError
"""
REPORT = """
print("heavy modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                                and sys.modules[m] is not None))
"""


def run_without_torch(code: str, *argv: str) -> None:
    """Run `code` (sys.argv[1:] = argv) with the heavy libraries blocked; fails the test if it fails or if any of
    them was loaded anyway."""
    done = subprocess.run([sys.executable, "-c", BLOCK + code + REPORT, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "heavy modules: []" in done.stdout, done.stdout
