"""Export CLIPSeg (text -> mask, e.g. CIDAS/clipseg-rd64-refined) into a segmenter engine directory.

The source is a transformers folder: config.json (model_type "clipseg"), the weights, the processor's
preprocessor_config.json (ViTImageProcessor: resize to a square frame, rescale, normalize) and the CLIP tokenizer.
One graph, "clipseg": pixel_values (P, 3, R, R) and input_ids (K, L) -> logits (K, R', R'), P = 1 or K. With one
picture the vision transformer runs once and its activations are shared by the K phrases (the transformers model
would run it K times on K copies; the numbers are the same). No attention mask goes in: the text encoder is causal
and its pooled output is read at the end-of-text token, which never sees the padding after it.

The runtime (engine/segment_clipseg.py) preprocesses as the processor's PIL backend does, from what the manifest's
`model` records: resolution, resample, rescale_factor, image_mean, image_std.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..engine.families import CLIPSEG
from ..engine.manifest import SEGMENTER
from .exporter import export_component, save_tokenizer, library_versions, check_output, engine_directory
from .specs import ComponentSpec, TensorSpec

EXPECTED = ("a CLIPSeg folder as transformers saves it (CIDAS/clipseg-rd64-refined: config.json with model_type "
            "\"clipseg\", model.safetensors or pytorch_model.bin, preprocessor_config.json and the tokenizer files)")


class ClipSegSourceError(ValueError):
    """The source is not a CLIPSeg folder this export reads (the message says what it expected)."""


def detect_clipseg(path: str | Path) -> bool:
    """Whether `path` is a folder whose config.json says model_type "clipseg"."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == CLIPSEG
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, or JSON that is not an object
        return False


def load_clipseg(source: str | Path):
    """(CLIPSegForImageSegmentation in eval mode with eager attention, its CLIPSegProcessor) from a local folder."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    folder = _checked_folder(Path(source))
    try:
        # eager attention: the plain matmul-softmax pattern ONNX Runtime's fusions know; the same arithmetic
        model = CLIPSegForImageSegmentation.from_pretrained(folder, attn_implementation="eager").eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise ClipSegSourceError(f"{folder}: the CLIPSeg weights cannot be loaded ({type(e).__name__}: "
                                 f"{str(e)[:300]}); expected {EXPECTED}") from None
    try:
        processor = CLIPSegProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise ClipSegSourceError(f"{folder}: its processor (preprocessor_config.json and the CLIP tokenizer files) "
                                 f"cannot be loaded ({type(e).__name__}: {str(e)[:300]}); download the whole "
                                 "repository, not only the weights") from None
    return model, processor


def _checked_folder(path: Path) -> Path:
    if not path.exists():
        raise ClipSegSourceError(f"--model {str(path)!r} does not exist; pass {EXPECTED}")
    if not path.is_dir():
        raise ClipSegSourceError(f"--model {str(path)!r} is a file; CLIPSeg is exported from its folder: pass "
                                 f"{EXPECTED}")
    if not (path / "config.json").is_file():
        raise ClipSegSourceError(f"{path} has no config.json; pass {EXPECTED}")
    try:
        found = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise ClipSegSourceError(f"{path}/config.json is not a JSON object (damaged?); download it again") from None
    if found != CLIPSEG:
        raise ClipSegSourceError(f"{path}/config.json says model_type {found!r}, not \"clipseg\": this is not a "
                                 f"CLIPSeg model; pass {EXPECTED}")
    return path


def preprocessing(image_processor) -> dict:
    """What the runtime needs to redo the image processor: the square frame, resample, rescale and normalize
    (do_rescale / do_normalize off become a factor of 1 / mean 0, std 1)."""
    size = image_processor.size
    height, width = (getattr(size, "height", None), getattr(size, "width", None)) if not isinstance(size, dict) \
        else (size.get("height"), size.get("width"))
    if not image_processor.do_resize or not height or height != width:
        raise ClipSegSourceError(f"the image processor resizes to {size} (do_resize={image_processor.do_resize}); "
                                 "CLIPSeg runs at a square frame: its preprocessor_config.json needs do_resize true "
                                 "and a size of one side, e.g. \"size\": 352")
    if getattr(image_processor, "do_center_crop", None):
        raise ClipSegSourceError("the image processor center-crops; CLIPSeg's ViTImageProcessor does not, and the "
                                 "runtime would not match it: set do_center_crop false in preprocessor_config.json")
    normalize = bool(image_processor.do_normalize)
    return {"resolution": int(height), "resample": int(image_processor.resample),
            "rescale_factor": float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0,
            "image_mean": [float(v) for v in image_processor.image_mean] if normalize else [0.0, 0.0, 0.0],
            "image_std": [float(v) for v in image_processor.image_std] if normalize else [1.0, 1.0, 1.0]}


class ClipSegGraph(torch.nn.Module):
    """CLIPSegForImageSegmentation's forward for text prompts, the vision activations shared across phrases.

    The position embeddings are interpolated to the frame once, here, by the model's own method: traced, it
    would put a bicubic resize of them and the shape arithmetic around it into the graph, run at every call."""

    def __init__(self, model, resolution: int):
        super().__init__()
        self.model = model
        embeddings = model.clip.vision_model.embeddings
        grid = resolution // embeddings.patch_size
        with torch.no_grad():
            probe = torch.zeros(1, grid * grid + 1, embeddings.embed_dim)  # only its shape is read
            self.register_buffer("positions", embeddings.interpolate_pos_encoding(probe, resolution, resolution),
                                 persistent=False)
        embeddings.interpolate_pos_encoding = lambda *_: self.positions  # this instance's, the model's forward reads it

    def forward(self, pixel_values, input_ids):
        phrases = input_ids.shape[0]
        vision = self.model.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                              interpolate_pos_encoding=True)
        # hidden_states[0] is the embedding: layer i's output is i + 1, as the model's own forward reads them
        activations = [vision.hidden_states[i + 1].expand(phrases, -1, -1) for i in self.model.extract_layers]
        text = self.model.clip.get_text_features(input_ids=input_ids)
        conditional = getattr(text, "pooler_output", text)  # a tensor before transformers 5
        return self.model.decoder(activations, conditional).logits


def clipseg_spec(model, resolution: int, max_length: int, pad_id: int, bos: int, eos: int) -> ComponentSpec:
    """The sample rows: BOS, words with ids below both special tokens (CLIP's are its largest, which the legacy
    eos_token_id=2 pooling relies on), EOS, padding."""
    below = min(bos, eos)

    def make_inputs(pictures, phrases):
        g = torch.Generator().manual_seed(7 * pictures + phrases)
        pixels = torch.randn(pictures, 3, resolution, resolution, generator=g)
        ids = torch.full((phrases, max_length), pad_id, dtype=torch.int64)
        for row in range(phrases):  # rows of different lengths
            words = torch.randint(0, below, (2 + 3 * row,), generator=g)
            ids[row, : len(words) + 2] = torch.cat([torch.tensor([bos]), words, torch.tensor([eos])])
        return pixels, ids

    logits = model.config.vision_config.patch_size * (resolution // model.config.vision_config.patch_size)
    return ComponentSpec(
        "clipseg", ClipSegGraph(model, resolution).eval(),
        [TensorSpec("pixel_values", "float32", ("pictures", 3, resolution, resolution)),
         TensorSpec("input_ids", "int64", ("phrases", max_length))],
        [TensorSpec("logits", "float32", ("phrases", logits, logits))],
        make_inputs, [(1, 2), (1, 3), (2, 2)])  # one picture shared, and one picture per phrase


def export_clipseg(source: str | Path, output: str | Path, overwrite: bool = False, optimize: bool = True,
                   fp16: bool = False, log=print) -> Path:
    """Write a CLIPSeg engine directory, atomically as export_engine does: a failure leaves nothing. fp16 adds the
    fp16 graph and, when optimizing, ort-cuda's fused fp16 graph, each checked against torch."""
    check_output(Path(output), overwrite)  # before the weights are read
    model, processor = load_clipseg(source)
    frame = preprocessing(processor.image_processor)
    patch = model.config.vision_config.patch_size
    if frame["resolution"] % patch:
        raise ClipSegSourceError(f"the processor's frame {frame['resolution']} is not a multiple of the vision "
                                 f"model's patch size {patch}; CLIPSeg's decoder needs whole patches")
    with engine_directory(output, overwrite, log) as (work, manifest):
        tokenizer = save_tokenizer(processor.tokenizer, work, "tokenizer")
        # the processor pads to the tokenizer's length; the text model holds at most its position embeddings
        tokenizer["max_length"] = min(tokenizer["max_length"], model.config.text_config.max_position_embeddings)
        spec = clipseg_spec(model, frame["resolution"], tokenizer["max_length"], tokenizer["pad_id"],
                            processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id)
        log(f"exporting CLIPSeg at {frame['resolution']}x{frame['resolution']} ...")
        component = export_component(spec, work, optimize, "fp16" if fp16 else None)
        log(f"  clipseg: max relative error vs torch {component['parity']['max_rel_error']:.2e}"
            + (f", fp16 {component['fp16']['max_rel_error']:.2e}" if fp16 else ""))
        model_info = {"family": CLIPSEG, "kind": SEGMENTER, **frame,
                      "parameters": sum(p.numel() for p in model.parameters())}
        manifest.update(source=str(source), model=model_info, tokenizer=tokenizer, components={"clipseg": component},
                        versions=library_versions())
    return Path(output)
