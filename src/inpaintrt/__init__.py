"""inpaintrt: Stable Diffusion inpainting without diffusers at run time.

`from inpaintrt import Engine` imports only the runtime (numpy, onnxruntime, tokenizers, pillow);
the export stage (`inpaintrt.export`) needs torch and diffusers and is imported on its own.
"""
from .engine.engine import Engine, InpaintOutput, StopDenoising
from .engine.manifest import EngineDirectoryError

__all__ = ["Engine", "EngineDirectoryError", "InpaintOutput", "StopDenoising"]
__version__ = "0.1.0"
