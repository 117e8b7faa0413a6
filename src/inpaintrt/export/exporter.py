"""Export a loaded pipeline into an engine directory: ONNX graphs, tokenizer, scheduler config, manifest.

Everything is written into a temporary sibling directory; it is renamed into place only after
every graph matched torch and the finished directory reloaded cleanly. A failure leaves nothing.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.backends import load_tensorrt
from ..engine.manifest import read_manifest, write_manifest
from ..engine.families import SD1, SD2, SDXL
from ..engine.plans import DEFAULT_MAX_IMAGES, DEFAULT_SIZES, fp32_components
from .half import FP16_TOLERANCE, FP32_TOLERANCE, convert_to_fp16, copy_fp32, relative_error
from .cuda_graphs import export_cuda_graph
from .external_data import save_streaming, weight_bytes
from . import lora_map
from .optimize import classic_attention, optimize_for_cpu
from .safety import export_safety_checker, has_safety_checker
from .specs import ComponentSpec, component_specs, is_sdxl, text_encoders, time_ids_length

OPSET = 17
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf cannot hold 2 GiB; bigger graphs keep weights beside them


class ExportError(RuntimeError):
    """Export could not produce a correct engine directory."""


@dataclass
class PlanOptions:
    """What `--backend tensorrt` builds: plans for these static sizes and batches up to max_images."""
    sizes: tuple = DEFAULT_SIZES
    max_images: int = DEFAULT_MAX_IMAGES
    timing_cache: Path | None = None


def export_engine(pipe, output: str | Path, source: str = "", overwrite: bool = False, optimize: bool = True,
                  log=print, fp16: bool = False, tensorrt: PlanOptions | None = None, release: bool = False,
                  controlnets: list | None = None, cuda_fusions_off: tuple[str, ...] = (),
                  loras: list | None = None, safety_checker: bool = True) -> Path:
    """Write an engine directory. fp16 adds fp16 graphs (the input of TensorRT builds, checked against
    torch) and, when optimizing, CUDA-optimized fp16 graphs for ort-cuda (cuda_graphs.py); tensorrt
    also builds and verifies TensorRT plans, and fails first if TensorRT cannot run here.
    release frees each torch component's weights once exported (the pipeline is unusable afterwards):
    peak memory is then one component's, not the whole pipeline's. controlnets (export/controlnet.py's
    load_controlnet) adds them and makes the UNet take their residuals. cuda_fusions_off: CUDA fusions
    (cuda_graphs.CUDA_FUSIONS) left out of ort-cuda's graphs, to measure what each one buys. loras:
    (file, scale) pairs or "FILE[:SCALE]" strings fused into the weights first (lora_map.py). safety_checker:
    export the pipeline's StableDiffusionSafetyChecker when it has one (safety.py); False leaves it out."""
    if tensorrt is not None:
        load_tensorrt()  # fail before the long export, with the install instructions
        fp16 = True
    with engine_directory(output, overwrite, log) as (work, manifest):
        if optimize:
            classic_attention(pipe)
        # configs first: with `release`, each torch module is dropped once its graph is written
        manifest.update(source=source, model=_model_info(pipe), scheduler=_scheduler_config(pipe, work),
                        **_save_tokenizers(pipe, work), versions=library_versions())
        if loras:
            manifest["loras"] = lora_map.bake(pipe, loras, log)
        # hashed before export: `release` frees the torch weights once a graph is written
        prints = {c: lora_map.fingerprint(getattr(pipe, c)) for c in lora_map.LORA_COMPONENTS
                  if getattr(pipe, c, None) is not None}
        components = manifest["components"] = {}
        specs = component_specs(pipe)
        if controlnets:
            from .controlnet import with_controlnets

            specs, control = with_controlnets(pipe, specs, controlnets, optimize)
            manifest.update(control)
        for i, spec in enumerate(specs):
            log(f"exporting {spec.name} ...")
            half = ("fp32" if spec.name in fp32_components(manifest["model"]) else "fp16") if fp16 else None
            done = (lambda spec=spec, later=specs[i + 1:]: _release(spec, later)) if release else None
            components[spec.name] = export_component(spec, work, optimize, half, done, cuda_fusions_off)
            log(f"  {spec.name}: max relative error vs torch {components[spec.name]['parity']['max_rel_error']:.2e}"
                + (f", fp16 {components[spec.name]['fp16']['max_rel_error']:.2e}" if fp16 else ""))
        if safety_checker and has_safety_checker(pipe):
            log("exporting safety_checker ...")
            manifest["safety_checker"] = export_safety_checker(pipe, work, log)
        manifest["lora_map"] = lora_map.build_map(work, manifest, prints)
        if tensorrt is not None:
            from .trt_build import build_plans

            manifest["tensorrt"] = build_plans(work, manifest, tensorrt.sizes, tensorrt.max_images,
                                               tensorrt.timing_cache, log)
    return Path(output)


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"--output {str(output)!r} exists and is not empty; pass --overwrite or choose another path")


@contextlib.contextmanager
def engine_directory(output: str | Path, overwrite: bool = False, log=print):
    """(work folder, manifest dict) to fill: a temporary sibling of `output`. When the block ends the manifest is
    written, the folder reloaded (everything listed is there and hashes match) and renamed into place; any
    failure removes it, so an export leaves a whole engine directory or nothing."""
    output = Path(output)
    check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    work.chmod(0o755)
    manifest: dict = {}
    try:
        yield work, manifest
        write_manifest(work, manifest)
        read_manifest(work)
        _move_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"engine written to {output}")


def export_component(spec: ComponentSpec, work: Path, optimize: bool, fp16: str | None,
                      done_with_torch=None, cuda_fusions_off: tuple[str, ...] = ()) -> dict:
    """fp16: None, or the precision of the TensorRT input graph written beside the fp32 one ("fp16" or "fp32")."""
    import onnx
    import torch

    path = work / f"{spec.name}.onnx"
    scratch = Path(tempfile.mkdtemp(dir=work))
    references = torch_references(spec)
    traced = spec.make_inputs(*spec.check_shapes[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            spec.module.eval(), traced, str(scratch / "graph.onnx"),
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    if done_with_torch:  # the references are computed and the graph is on disk: free the torch weights now
        done_with_torch()
    half = _export_fp16(spec, scratch / "graph.onnx", work, references, fp16) if fp16 else None
    # ort-cuda's graph, fused for the CUDA provider and converted from the same traced graph
    cuda = (export_cuda_graph(spec.name, scratch / "graph.onnx", work, references, fp16, EXTERNAL_DATA_BYTES, half,
                              cuda_fusions_off) if fp16 and optimize else None)
    # Weights stay on disk while the graph is optimized (a full UNet is 3.4 GB and protobuf stops at
    # 2 GiB); the optimizer reads the few it needs relative to the working directory.
    model = onnx.load(str(scratch / "graph.onnx"), load_external_data=False)
    fused = {}
    if optimize:
        with contextlib.chdir(scratch):
            model, fused = optimize_for_cpu(spec.name, model)
    big = weight_bytes(model, scratch) > EXTERNAL_DATA_BYTES
    if big:  # tensor by tensor from torch's files: the weights are never in memory twice
        save_streaming(model, scratch, path)
    else:
        onnx.load_external_data_for_model(model, str(scratch))
        onnx.save_model(model, str(path))
    del model
    shutil.rmtree(scratch)
    error = check_parity(spec, path, references)
    if not error <= FP32_TOLERANCE:
        raise ExportError(
            f"{spec.name}: the ONNX graph differs from torch by {error:.2e} (relative), more than {FP32_TOLERANCE:g}; "
            "the export is not trustworthy and was discarded"
        )
    files = [path.name] + ([f"{path.name}.data"] if big else [])
    for name in files:
        (work / name).chmod(0o644)  # onnx writes external data owner-only
    return {
        "file": path.name, "files": files, "backend": "onnx", "precision": "fp32",
        "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs],
        "parity": {"max_rel_error": float(error), "shapes": [list(s) for s in spec.check_shapes]},
        "optimization": {"target": "cpu", "fused": fused} if optimize else None,
        **({"fp16": half} if half else {}),
        **({"cuda": cuda} if cuda else {}),
    }


def _export_fp16(spec: ComponentSpec, traced: Path, work: Path, references: list, precision: str = "fp16") -> dict:
    """The TensorRT input graph in fp16/: fp16, or for the SDXL VAE with force_upcast a plain fp32 copy
    (recorded as its `precision`), so no plan of it runs in fp16."""
    path = work / "fp16" / f"{spec.name}.onnx"
    if precision == "fp32":
        files, tolerance = copy_fp32(traced, path, EXTERNAL_DATA_BYTES), FP32_TOLERANCE
    else:
        files, tolerance = convert_to_fp16(traced, path, EXTERNAL_DATA_BYTES), FP16_TOLERANCE
    error = check_parity(spec, path, references)
    if not error <= tolerance:
        raise ExportError(
            f"{spec.name}: the {precision} graph for TensorRT differs from torch by {error:.2e} (relative), more than "
            f"{tolerance:g} (fp16 overflow?); export without --fp16 / --backend tensorrt for this checkpoint"
        )
    for name in files:
        (path.parent / name).chmod(0o644)
    (work / "fp16").chmod(0o755)
    return {"file": f"fp16/{path.name}", "files": [f"fp16/{name}" for name in files], "max_rel_error": float(error),
            "precision": precision}


def torch_references(spec: ComponentSpec) -> list[tuple[dict, dict]]:
    """(inputs, torch's outputs) as numpy at each of the spec's check shapes: computed once, before
    export, so the checks need no torch module afterwards."""
    import torch

    references = []
    for shape in spec.check_shapes:
        inputs = spec.make_inputs(*shape)
        with torch.no_grad():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        references.append(({t.name: x.numpy() for t, x in zip(spec.inputs, inputs)},
                           {t.name: e.numpy() for t, e in zip(spec.outputs, expected)}))
    return references


def check_parity(spec: ComponentSpec, path: Path, references: list | None = None) -> float:
    """Worst relative error of the saved graph against torch over the spec's check shapes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if (path.parent / f"{path.name}.data").exists():  # a big graph: hold its weights once, not pre-packed too
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs, expected in references or torch_references(spec):
        got = session.run(list(expected), inputs)
        worst = max(worst, relative_error(dict(zip(expected, got)), expected))
    return worst


def _release(spec: ComponentSpec, later: list[ComponentSpec]) -> None:
    """Free the weights of a torch module no later component uses (the VAE serves two)."""
    import torch

    def weights(module):
        return {p.data_ptr() for p in module.parameters()}

    if not any(weights(spec.module) & weights(other.module) for other in later):
        spec.module.to(torch.device("meta"))


def _model_info(pipe) -> dict:
    unet, vae = pipe.unet.config, pipe.vae.config
    vae_scale = 2 ** (len(vae.block_out_channels) - 1)
    sdxl = {}
    if is_sdxl(pipe):
        sdxl = {
            "requires_aesthetics_score": bool(pipe.config.requires_aesthetics_score),
            "force_zeros_for_empty_prompt": bool(pipe.config.force_zeros_for_empty_prompt),
            "time_ids": time_ids_length(pipe),
            "vae_force_upcast": bool(getattr(vae, "force_upcast", True)),
        }
    latents_mean, latents_std = getattr(vae, "latents_mean", None), getattr(vae, "latents_std", None)
    if latents_mean is not None and latents_std is not None:  # VAEs that normalise latents per channel
        sdxl.update(vae_latents_mean=list(map(float, latents_mean)), vae_latents_std=list(map(float, latents_std)))
    return {
        **sdxl,
        "family": SDXL if is_sdxl(pipe) else SD2 if unet.cross_attention_dim == 1024 else SD1,
        "unet_in_channels": unet.in_channels,
        "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon"),
        "latent_channels": vae.latent_channels,
        "vae_scale_factor": vae_scale,
        "vae_scaling_factor": vae.scaling_factor,
        "default_height": unet.sample_size * vae_scale,
        "default_width": unet.sample_size * vae_scale,
        "text_hidden_size": sum(encoder.config.hidden_size for _, encoder, _ in text_encoders(pipe)),
        "text_encoders": [name for name, _, _ in text_encoders(pipe)],
    }


def _scheduler_config(pipe, work: Path) -> dict:
    config = json.loads(json.dumps(dict(pipe.scheduler.config), default=_jsonable))
    config["_class_name"] = type(pipe.scheduler).__name__
    (work / "scheduler").mkdir()
    (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _save_tokenizers(pipe, work: Path) -> dict:
    """{"tokenizers": {text encoder: tokenizer info}, "tokenizer": the first one's} (older readers know only
    "tokenizer"); SDXL's second tokenizer goes to tokenizer_2/."""
    found = {name: save_tokenizer(tokenizer, work, "tokenizer" if name == "text_encoder" else "tokenizer_2")
             for name, _, tokenizer in text_encoders(pipe)}
    return {"tokenizers": found, "tokenizer": next(iter(found.values()))}


def save_tokenizer(tokenizer, work: Path, folder_name: str) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer (older transformers): convert it to a tokenizers file
        from transformers import CLIPTokenizerFast

        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            backend = CLIPTokenizerFast.from_pretrained(folder).backend_tokenizer
    folder = work / folder_name
    folder.mkdir(exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    pad = tokenizer.pad_token or tokenizer.eos_token
    return {
        "file": f"{folder_name}/tokenizer.json",
        "max_length": int(tokenizer.model_max_length),
        "pad_token": pad,
        "pad_id": int(tokenizer.convert_tokens_to_ids(pad)),
    }


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "diffusers", "transformers", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _move_into_place(work: Path, output: Path) -> None:
    if output.exists():
        old = output.with_name(f".{output.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        work.rename(output)
        shutil.rmtree(old)
    else:
        work.rename(output)
