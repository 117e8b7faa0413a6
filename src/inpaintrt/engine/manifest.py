"""manifest.json: the only contract between export and runtime (docs/architecture.md, "The engine directory").

Export writes it; `read_manifest` validates it on load and refuses a stale, incomplete or
altered engine directory with a message that says how to rebuild.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "inpaintrt-engine"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# an SDXL refiner has only the second text encoder; base and inpainting checkpoints have both
SDXL_COMPONENTS = ("text_encoder_2", "unet", "vae_encoder", "vae_decoder")
# Kandinsky 2.2: the decoder always, the prior's two graphs when exported with --prior
KANDINSKY_COMPONENTS = ("unet", "movq_encoder", "movq_decoder")
KANDINSKY_PRIOR_COMPONENTS = ("prior_text_encoder", "prior")
KANDINSKY_PRIOR_KEYS = ("scheduler", "embedding_dim", "tokenizer", "constants")
MODEL_KEYS = (
    "family", "unet_in_channels", "prediction_type", "latent_channels", "vae_scale_factor",
    "vae_scaling_factor", "default_height", "default_width",
)
# model.kind: what the directory holds; directories written before erasers have none and are diffusion models
DIFFUSION, ERASER = "diffusion", "eraser"
# an eraser: one graph, image (B,3,H,W) in [0, 1] and mask (B,1,H,W) 1 = hole -> output (B,3,H,W) in [0, 1];
# H and W multiples of size_multiple, or the fixed resolution x resolution where that is set
ERASER_COMPONENTS = ("eraser",)
ERASER_MODEL_KEYS = ("family", "kind", "size_multiple", "resolution")
# a mask maker (Segment Anything, CLIPSeg): its graphs turn a picture plus clicks or a phrase into mask logits;
# `resolution` is the square frame its encoder sees (SAM 1024, CLIPSeg 352)
SEGMENTER = "segmenter"
SAM_COMPONENTS = ("sam_encoder", "sam_decoder")
CLIPSEG_COMPONENTS = ("clipseg",)
SEGMENTER_MODEL_KEYS = ("family", "kind", "resolution")


class EngineDirectoryError(ValueError):
    """The engine directory is missing, incomplete, altered or from another format version."""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


RUNTIME_CACHES = (".openvino-cache",)  # written by backends at load time: not part of the engine


def describe_files(root: Path) -> dict:
    """{relative path: {bytes, sha256}} for every file under root except the manifest and runtime caches."""
    return {
        p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and p.relative_to(root).parts[0] not in RUNTIME_CACHES
    }


def model_kind(manifest: dict) -> str:
    return manifest.get("model", {}).get("kind", DIFFUSION)


def required_components(manifest: dict) -> tuple[str, ...]:
    if model_kind(manifest) == ERASER:
        return ERASER_COMPONENTS
    family = manifest.get("model", {}).get("family")
    if model_kind(manifest) == SEGMENTER:
        return CLIPSEG_COMPONENTS if family == "clipseg" else SAM_COMPONENTS
    if family == "kandinsky22":
        prior = manifest.get("prior") or {}
        # the image encoder (pictures as prompts) is optional: directories exported before it still load
        section = prior.get("image_encoder")
        encoder = (section.get("component", "prior_image_encoder"),) if isinstance(section, dict) else ()
        return KANDINSKY_COMPONENTS + (KANDINSKY_PRIOR_COMPONENTS + encoder if prior else ())
    return SDXL_COMPONENTS if family == "sdxl" else COMPONENTS


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=describe_files(root))
    partial = root / ".manifest.json.partial"  # renamed over the old one: a reader never sees half a file
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    partial.replace(root / "manifest.json")


def read_manifest(root: str | Path, verify_hashes: bool = True) -> dict:
    root = Path(root)
    rebuild = f"re-export it with `inpaint-export --model <checkpoint> --output {root}`"
    path = root / "manifest.json"
    if not root.is_dir():
        raise EngineDirectoryError(f"engine directory {str(root)!r} does not exist; create it with `inpaint-export`")
    if not path.is_file():
        raise EngineDirectoryError(f"{root} has no manifest.json, so it is not an engine directory; {rebuild}")
    try:
        manifest = json.loads(path.read_text(), object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EngineDirectoryError(f"{path} is not valid JSON ({str(e)[:200]}); {rebuild}") from None
    except DuplicateKey as e:
        raise EngineDirectoryError(f"{path} {e}; {rebuild}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EngineDirectoryError(f"{path} is not an inpaintrt manifest; {rebuild}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineDirectoryError(
            f"{root} has manifest format version {version!r}, but this inpaintrt reads version {FORMAT_VERSION}; {rebuild}"
        )
    wrong = _wrong_types(manifest)
    if wrong:
        raise EngineDirectoryError(f"{path} is damaged: {wrong}; {rebuild}")
    family = manifest.get("model", {}).get("family")
    kind = model_kind(manifest)
    # no scheduler: erasers and mask makers; no tokenizer: those but CLIPSeg, and a decoder-only Kandinsky
    untokenized = family == "kandinsky22" or kind == ERASER or (kind == SEGMENTER and family != "clipseg")
    unscheduled = kind in (ERASER, SEGMENTER)
    missing = [k for k in ("model", "scheduler", "tokenizer", "components", "files") if k not in manifest
               and not (untokenized and k == "tokenizer") and not (unscheduled and k == "scheduler")]
    missing += [f"prior.{k}" for k in KANDINSKY_PRIOR_KEYS if family == "kandinsky22"
                and manifest.get("prior") is not None and k not in manifest["prior"]]
    model_keys = {ERASER: ERASER_MODEL_KEYS, SEGMENTER: SEGMENTER_MODEL_KEYS}.get(kind, MODEL_KEYS)
    missing += [f"model.{k}" for k in model_keys if k not in manifest.get("model", {})]
    missing += [f"components.{c}" for c in required_components(manifest) if c not in manifest.get("components", {})]
    try:
        missing += _missing_plan_keys(manifest)
        missing += _missing_controlnet_keys(manifest)
    except (AttributeError, TypeError, KeyError) as e:  # a section of the wrong shape
        raise EngineDirectoryError(f"{path} is damaged: its tensorrt or controlnets section is malformed ({e}); "
                                   f"{rebuild}") from None
    if missing:
        raise EngineDirectoryError(f"{path} lacks {', '.join(missing)}; {rebuild}")
    for rel, info in manifest["files"].items():
        file = root / rel
        if not file.is_file():
            raise EngineDirectoryError(f"{root} is missing {rel}, which the manifest lists; {rebuild}")
        if file.stat().st_size != info["bytes"]:
            raise EngineDirectoryError(
                f"{rel} in {root} has {file.stat().st_size} bytes, the manifest says {info['bytes']} "
                f"(truncated or replaced); {rebuild}"
            )
    if verify_hashes:
        verify_files(root, manifest)
    return manifest


class DuplicateKey(ValueError):
    pass


def unique_keys(pairs):
    """json's object_pairs_hook that refuses a key given twice (json keeps the last one silently)."""
    found = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"has the key {key!r} twice")
        found[key] = value
    return found


KIND_NAMES = {str: "a name", int: "an integer"}
MODEL_TYPES = {"family": str, "kind": str, "size_multiple": int, "resolution": int, "prediction_type": str,
               "unet_in_channels": int, "latent_channels": int, "vae_scale_factor": int,
               "vae_scaling_factor": (int, float), "default_height": int, "default_width": int}


def _wrong_types(manifest: dict) -> str | None:
    """What in a manifest has the wrong kind of value (a hand-edited or damaged file), or None."""
    for key in ("model", "scheduler", "tokenizer", "components", "files", "prior"):
        if key in manifest and not isinstance(manifest[key], dict) and not (key == "prior" and manifest[key] is None):
            return f"{key} is a {type(manifest[key]).__name__}, not an object"
    for key, kind in MODEL_TYPES.items():
        value = manifest.get("model", {}).get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"model.{key} is {value!r}, not {KIND_NAMES.get(kind, 'a number')}"
    for name, component in manifest.get("components", {}).items():
        if not isinstance(component, dict) or not isinstance(component.get("file"), str):
            return f"components.{name} has no graph file"
    for rel, info in manifest.get("files", {}).items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            return f"files names {rel!r}, which is outside the engine directory"
        if (not isinstance(info, dict) or type(info.get("bytes")) is not int
                or not isinstance(info.get("sha256"), str)):
            return f"files.{rel} has no byte count and sha256"
    return None


def verify_files(root: Path, manifest: dict, skip: set[str] = frozenset()) -> set[str]:
    """Check every listed file's sha256 but those in `skip` (files the backend will not read);
    returns the files checked."""
    checked = set()
    for rel, info in manifest["files"].items():
        if rel in skip:
            continue
        if file_digest(Path(root) / rel) != info["sha256"]:
            raise EngineDirectoryError(f"{rel} in {root} does not match its hash in the manifest (altered); "
                                       f"re-export it with `inpaint-export --model <checkpoint> --output {root}`")
        checked.add(rel)
    return checked


CONTROLNET_KEYS = ("component", "source", "kind", "conditioning_channels", "global_pool_conditions")


def _missing_controlnet_keys(manifest: dict) -> list[str]:
    """The optional `controlnets` list: each entry's keys and component, the residual layout,
    and the UNet's inputs for every residual."""
    entries = manifest.get("controlnets")
    if not entries:
        return []
    missing = [f"controlnets[{i}].{k}" for i, e in enumerate(entries) for k in CONTROLNET_KEYS if k not in e]
    components = manifest.get("components", {})
    missing += [f"components.{e['component']}" for e in entries if "component" in e and e["component"] not in components]
    layout = manifest.get("controlnet_residuals") or []
    if not layout:
        missing.append("controlnet_residuals")
    unet_inputs = {t.get("name") for t in components.get("unet", {}).get("inputs", [])}
    missing += [f"components.unet.inputs[{r.get('name')}]" for r in layout if r.get("name") not in unet_inputs]
    return missing


TENSORRT_KEYS = ("version", "compute_capability", "device", "precision", "max_images", "sizes", "plans")


def _missing_plan_keys(manifest: dict) -> list[str]:
    """The optional `tensorrt` section: its keys, a plan per component, each plan file listed."""
    section = manifest.get("tensorrt")
    if section is None:
        return []
    missing = [f"tensorrt.{k}" for k in TENSORRT_KEYS if k not in section]
    plans = section.get("plans", {})
    missing += [f"tensorrt.plans.{c}" for c in manifest.get("components", {}) if not plans.get(c)]
    missing += [f"files[{p['file']}]" for c in plans.values() for p in c if p.get("file") not in manifest.get("files", {})]
    return missing
