"""The export stage: checkpoint -> engine directory. Needs torch, diffusers, transformers and onnx."""
