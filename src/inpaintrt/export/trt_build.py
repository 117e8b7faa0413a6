"""Build TensorRT plans from an engine directory's fp16 ONNX graphs (TensorRT 10.8+ or 11.x and a GPU; no torch).

Networks are strongly typed: the precision is the graph's (fp16 weights and activations, softmax and
inputs/outputs in float32 where the export put them), never a builder flag. TensorRT 11 removed the
precision flags and builds nothing else; 10.x is asked for it with the STRONGLY_TYPED creation flag.
One plan per component and static size (a text encoder needs one), each with one optimization
profile whose batch axis is a range (plans.py computes them from the manifest, SDXL's UNet inputs
`text_embeds`/`time_ids` and its second text encoder included). The SDXL VAE with `force_upcast` is
built from its fp32 graph (the export keeps it out of fp16), so that plan is fp32. A persistent timing
cache, keyed like the plans by TensorRT version and GPU, makes rebuilds fast. Every plan must have
the manifest's input/output names and dtypes, and is run once through the backend's own runner and
compared with the stored fp32 ONNX graph before it is accepted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..engine.backends import load_tensorrt
from ..engine.manifest import read_manifest, write_manifest
from ..engine.plans import fp32_components, plan_layout, refuse_unplanned
from ..engine.trt_backend import PlanRunner, SharedScratch, io_mismatch
from .half import FP16_TOLERANCE, relative_error

WORKSPACE_BYTES = 8 << 30


class PlanBuildError(RuntimeError):
    """TensorRT could not build or verify a plan."""


def default_timing_cache(version: str, compute_capability: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inpaintrt"
    return base / f"tensorrt-{version}-sm{compute_capability.replace('.', '')}.cache"


def network_flags(trt) -> int:
    """Creation flags of a strongly typed network: 11.x networks are nothing else (it ignores the flag)."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_plan(trt, logger, onnx_path: Path, profile: dict, cache_path: Path) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()  # no precision flags: the graph's types are the precision
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    shapes = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        shapes.set_shape(name, low, opt, high)
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PlanBuildError(f"TensorRT could not build a plan from {onnx_path.name} (see its log above)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_suffix(".partial")
    partial.write_bytes(bytes(config.get_timing_cache().serialize()))
    partial.replace(cache_path)
    return bytes(plan)


def sample_feeds(inputs: list[dict], profile: dict, largest_id: int, seed: int = 0,
                 size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Inputs at each profile's opt shape with the values the engine feeds: token ids up to largest_id,
    timesteps, SDXL's time ids for the plan's size (original size, crop (0, 0), target size or aesthetic
    score 6), normals."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in inputs:
        shape = tuple(profile[tensor["name"]][1])
        if tensor["dtype"].startswith("int"):
            feeds[tensor["name"]] = rng.integers(0, largest_id + 1, shape).astype(tensor["dtype"])
        elif tensor["name"] == "timestep":
            feeds[tensor["name"]] = rng.uniform(0, 1000, shape).astype(np.float32)
        elif tensor["name"] == "time_ids":
            height, width = size or (1024, 1024)
            ids = [height, width, 0, 0] + ([height, width] if shape[1] == 6 else [6.0])
            feeds[tensor["name"]] = np.tile(np.array(ids, np.float32), (shape[0], 1))
        else:
            feeds[tensor["name"]] = np.clip(rng.standard_normal(shape, dtype=np.float32), -3, 3)
    return feeds


def largest_token_id(folder: Path, manifest: dict, component: str) -> int:
    """The largest id of the tokenizer feeding `component` (its vocabulary, not its pad id: SDXL's second
    tokenizer pads with id 0)."""
    from tokenizers import Tokenizer

    info = (manifest.get("tokenizers") or {}).get(component, manifest["tokenizer"])
    return Tokenizer.from_file(str(folder / info["file"])).get_vocab_size() - 1


def check_precisions(folder: Path, manifest: dict) -> None:
    """Refuse fp16 graphs where the plan must stay fp32 (an SDXL VAE exported before that rule)."""
    wrong = [name for name in fp32_components(manifest["model"])
             if manifest["components"][name]["fp16"].get("precision", "fp16") != "fp32"]
    if wrong:
        raise PlanBuildError(f"{folder} holds fp16 graphs of {', '.join(wrong)}, but this SDXL VAE is not fp16-safe "
                             "(vae_force_upcast) and would overflow in fp16; re-export with this inpaintrt's "
                             "`inpaint-export --fp16`, which keeps it fp32")


def build_plans(folder: Path, manifest: dict, sizes, max_images: int, timing_cache: Path | None = None,
                log=print, plans_dir: Path | None = None) -> dict:
    """Build and verify a plan per component and size from the graphs in `folder`, write them to
    `plans_dir` (default folder/plans), and return the manifest's `tensorrt` section."""
    from ..engine.backends import OrtBackend

    refuse_unplanned(manifest, folder)
    trt, cupy, device = load_tensorrt()
    components = manifest["components"]
    lacking = [name for name, c in components.items() if "fp16" not in c]
    if lacking:
        raise PlanBuildError(f"{folder} has no fp16 graphs for {', '.join(lacking)}; re-export with "
                             "`inpaint-export --fp16` (or `--backend tensorrt`)")
    check_precisions(folder, manifest)
    cache_path = timing_cache or default_timing_cache(trt.__version__, device["compute_capability"])
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    scratch, stream = SharedScratch(cupy), cupy.cuda.Stream(non_blocking=True)
    layout = plan_layout(components, sizes, max_images, manifest["model"].get("vae_scale_factor", 1))
    plans_dir = plans_dir or folder / "plans"
    plans_dir.mkdir(exist_ok=True)
    for name, plans in layout.items():
        reference = OrtBackend(folder / components[name]["file"])
        for plan in plans:
            log(f"building TensorRT plan {plan['file']} ...")
            data = build_plan(trt, logger, folder / components[name]["fp16"]["file"], plan["profile"], cache_path)
            (plans_dir / Path(plan["file"]).name).write_bytes(data)
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise PlanBuildError(f"TensorRT could not load the plan {plan['file']} it built (see its log above)")
            mismatch = io_mismatch(trt, engine, components[name])
            if mismatch:
                raise PlanBuildError(f"the TensorRT plan {plan['file']} does not fit the manifest ({mismatch}); the "
                                     "fp16 graphs must keep the manifest's input and output types: re-export with "
                                     "`inpaint-export --fp16`")
            runner = PlanRunner(trt, engine, scratch, stream, cupy)
            largest = largest_token_id(folder, manifest, name) if name.startswith("text_encoder") else 0
            feeds = sample_feeds(components[name]["inputs"], plan["profile"], largest, size=plan["size"])
            plan["max_rel_error"] = relative_error(runner.run(feeds), reference.run(feeds))
            del runner
            log(f"  {plan['file']}: max relative error vs the fp32 graph {plan['max_rel_error']:.2e}")
            if not plan["max_rel_error"] <= FP16_TOLERANCE:
                raise PlanBuildError(f"the TensorRT plan {plan['file']} differs from the fp32 graph by "
                                     f"{plan['max_rel_error']:.2e} (relative), more than {FP16_TOLERANCE:g}; discarded")
    return {
        "version": trt.__version__, "compute_capability": device["compute_capability"], "device": device["name"],
        # "mixed": the plans' own `precision` says which are fp32 (the SDXL VAE with force_upcast)
        "precision": "fp16" if all(p["precision"] == "fp16" for ps in layout.values() for p in ps) else "mixed",
        "strongly_typed": True, "max_images": max_images, "sizes": [list(s) for s in sizes],
        "plans": layout,
    }


def rebuild_plans(root: Path, sizes, max_images: int, timing_cache: Path | None = None, log=print) -> None:
    """Replace the plans of an existing engine directory; a failed build leaves it unchanged."""
    manifest = read_manifest(root)
    work = Path(tempfile.mkdtemp(prefix=".plans-partial-", dir=root))
    try:
        section = build_plans(root, manifest, sizes, max_images, timing_cache, log, plans_dir=work)
        old = root / ".plans-old"
        shutil.rmtree(old, ignore_errors=True)
        if (root / "plans").exists():
            (root / "plans").rename(old)
        work.chmod(0o755)
        work.rename(root / "plans")
        shutil.rmtree(old, ignore_errors=True)
        kept = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")}
        write_manifest(root, dict(kept, tensorrt=section))
    finally:
        shutil.rmtree(work, ignore_errors=True)
