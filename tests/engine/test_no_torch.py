"""The runtime imports no torch, diffusers or transformers: it runs with them made unimportable."""
import subprocess
import sys

SCRIPT = """
import sys
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None  # any import of them now raises ImportError
import numpy as np
from PIL import Image
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
image = Image.new("RGB", (64, 48), (120, 80, 40))
mask = Image.new("L", (64, 48), 255)
out = engine.inpaint(image, mask, prompt="a cat", num_inference_steps=2, height=48, width=64,
                     generator=0, output_type="np", progress=False)
assert out.images.shape == (1, 48, 64, 3) and np.isfinite(out.images).all()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                and sys.modules[m] is not None)
print("heavy modules:", loaded)
"""


def test_runtime_runs_without_torch(engines):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(engines[9])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stdout
