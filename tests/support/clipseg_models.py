"""A tiny CLIPSeg with random weights in the layout of CIDAS/clipseg-rd64-refined: config.json + weights,
tokenizer files and the processor's preprocessor_config.json, all written by transformers' save_pretrained.

Like the real checkpoint, the processor's frame (64) is larger than the vision config's image_size (32), so the
model interpolates its position embeddings, and patch 16 with the "complex" transposed convolution gives logits at
the frame's full size. The text config keeps the legacy eos_token_id=2 of CIDAS's config (the pooled output is
taken at the largest token id) unless told otherwise.
"""
from __future__ import annotations

from pathlib import Path

CLIPSEG_FRAME = 64  # the processor's resize target: the engine's resolution
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # CIDAS's preprocessor_config.json


def tiny_clipseg_config(eos_token_id: int = 2):
    from transformers import CLIPSegConfig

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=eos_token_id, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                  patch_size=16)
    return CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, reduce_dim=16,
                         extract_layers=[0, 1, 2], conditional_layer=0, decoder_num_attention_heads=2,
                         decoder_intermediate_size=32, use_complex_transposed_convolution=True)


def tiny_clipseg(seed: int = 3, eos_token_id: int = 2):
    """The model, every weight drawn at a scale that keeps activations moderate (sigmoid not saturated)."""
    import torch
    from transformers import CLIPSegForImageSegmentation

    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(tiny_clipseg_config(eos_token_id)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.is_floating_point() and t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    return model


def tiny_clipseg_processor():
    """CLIPSegProcessor: the PIL ViT image processor at CLIPSEG_FRAME, bilinear, and openai's CLIP tokenizer."""
    from transformers import CLIPSegProcessor
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from inpaintrt.export.model_parts import build_clip_tokenizer

    images = ViTImageProcessorPil(size={"height": CLIPSEG_FRAME, "width": CLIPSEG_FRAME}, resample=2,
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return CLIPSegProcessor(image_processor=images, tokenizer=build_clip_tokenizer())


def save_tiny_clipseg(folder: Path, eos_token_id: int = 2) -> Path:
    """The checkpoint folder `export_clipseg` reads (and transformers' from_pretrained)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clipseg(eos_token_id=eos_token_id).save_pretrained(folder)
    processor = tiny_clipseg_processor()  # apart, as CIDAS's repository has them: preprocessor_config.json
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    return folder
