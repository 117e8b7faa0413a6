"""The CUDA provider options an ort-cuda engine may be loaded with: one table, checked once.

ONNX Runtime's CUDA provider takes its options as strings and ignores a misspelt name; a user who
A/B-tests convolution paths must know the option took. So every option the engine lets through is
named here with the values it accepts, and anything else is a ValueError naming
`cuda_options.<name>` and the accepted values. The options the backend itself manages (device,
stream, CUDA graph) are not user settings: they follow from `Engine.load`'s own arguments.

Precedence: the engine's defaults, then the manifest's `cuda.provider_options` (what a measured sweep
chose for this engine), then `Engine.load(..., cuda_options=...)`.
"""
from __future__ import annotations

BOOLEAN = ("0", "1")
# name -> accepted string values, or int for a byte count (a positive whole number)
CUDA_OPTIONS: dict[str, tuple[str, ...] | type] = {
    "prefer_nhwc": BOOLEAN,  # channels-last convolutions (cuDNN's fast layout for fp16 tensor cores)
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "cudnn_conv_use_max_workspace": BOOLEAN,
    "cudnn_conv1d_pad_to_nc1d": BOOLEAN,
    "fuse_conv_bias": BOOLEAN,
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "gpu_mem_limit": int,
    "use_tf32": BOOLEAN,  # off by default: fp32 graphs then give diffusers' fp32 results
    "enable_skip_layer_norm_strict_mode": BOOLEAN,
    "tunable_op_enable": BOOLEAN,
    "tunable_op_tuning_enable": BOOLEAN,
}
MANAGED = ("device_id", "user_compute_stream", "has_user_compute_stream", "enable_cuda_graph")
DEFAULTS = {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}


def check_cuda_options(options, source: str = "cuda_options") -> dict[str, str]:
    """{name: string value} ONNX Runtime reads; ValueError naming `source.<name>` and the fix."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"{source} must be a dict of CUDA provider options, e.g. {{'prefer_nhwc': '1'}}; "
                         f"got {type(options).__name__}")
    checked = {}
    for name, value in options.items():
        if name in MANAGED:
            raise ValueError(f"{source}.{name} is set by the engine (device, stream and CUDA graph follow from "
                             "Engine.load's arguments): leave it out")
        accepted = CUDA_OPTIONS.get(name)
        if accepted is None:
            raise ValueError(f"{source}.{name} is not a CUDA provider option the engine passes on; choose from "
                             f"{', '.join(sorted(CUDA_OPTIONS))}")
        checked[name] = _value(name, value, accepted, source)
    return checked


def _value(name: str, value, accepted, source: str) -> str:
    if accepted is int:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.isdigit():
            number = int(value)
        if number is None or number < 1:
            raise ValueError(f"{source}.{name}={value!r} must be a positive whole number of bytes")
        return str(number)
    text = {True: "1", False: "0"}.get(value, value) if isinstance(value, bool) else value
    text = str(text) if isinstance(text, int) else text
    if text not in accepted:
        raise ValueError(f"{source}.{name}={value!r} is not accepted; choose one of {', '.join(accepted)}")
    return text


def parse_cuda_option(text: str) -> tuple[str, str]:
    """'NAME=VALUE' from a command line, checked like the rest."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--cuda-option {text!r} must be NAME=VALUE, e.g. prefer_nhwc=1")
    return name, check_cuda_options({name: value}, "--cuda-option")[name]


def chosen_options(manifest: dict, load_options) -> dict[str, str]:
    """The options an engine's sessions run with, in precedence order (see the module's text)."""
    recorded = manifest.get("cuda", {}).get("provider_options")
    return {**DEFAULTS, **check_cuda_options(recorded, "manifest cuda.provider_options"),
            **check_cuda_options(load_options)}


def provider_options(device_id: int, cuda_graph: bool, stream_ptr: int | None, chosen: dict) -> dict[str, str]:
    """The CUDA provider's options for one session: the chosen ones and those the backend manages."""
    managed = {"device_id": str(device_id), "enable_cuda_graph": "1" if cuda_graph else "0"}
    if stream_ptr is not None:
        managed["user_compute_stream"] = str(stream_ptr)
    return {**DEFAULTS, **chosen, **managed}
