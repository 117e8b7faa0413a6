"""How an engine directory is opened: one frozen record made by `Engine.load` from its keyword arguments
and passed whole to the backends, so a new load option is one field here and the code that reads it.
The server's settings hold one (their command-line defaults are its defaults)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .backends import check_choice


@dataclass(frozen=True)
class LoadOptions:
    backend: str = "auto"  # engine/backends.py BACKENDS
    precision: str | None = None  # None: each backend's own (fp32 on the CPU, fp16 on ort-cuda where exported)
    cuda_graph: bool = False  # TensorRT / ort-cuda replay the UNet call as a CUDA graph
    cuda_options: dict | None = None  # ONNX Runtime CUDA provider options (engine/cuda_options.py)
    loras: object = None  # [(file, scale), ...] fused at load (engine/lora.py)
    embeddings: object = None  # textual inversions, [file or (file, token), ...] (engine/textual_inversion.py)
    safety_checker: bool = True  # run the directory's safety checker where it has one
    verify_hashes: bool = True  # check each file the backend reads against the manifest's sha256
    eraser: str | None = None  # an eraser engine directory (LaMa, MI-GAN): masked_content="eraser" pre-fills with it

    def __post_init__(self):
        check_choice(self.backend, self.precision)  # a wrong pair fails before any file is read

    def as_arguments(self) -> dict:
        """Engine.load's keyword arguments for these options."""
        return asdict(self)


def add_load_arguments(parser, who: str = "the engine") -> None:
    """The load flags `inpaint` and `inpaint-serve` share, their defaults LoadOptions'."""
    from .backends import BACKENDS, PRECISIONS

    defaults = LoadOptions()
    group = parser.add_argument_group("loading")
    group.add_argument("--backend", default=defaults.backend, choices=BACKENDS,
                       help="auto (default): TensorRT when the engine has plans that run here, else ONNX Runtime "
                            "(CUDA, else CPU); with --precision bf16 it is openvino")
    group.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                       help="bf16: OpenVINO on the CPU (`pip install 'inpaintrt[openvino]'`), about 2x faster where "
                            "the CPU has bf16, close to but not exactly diffusers'; fp16 / fp32: ort-cuda's graphs; "
                            "default: each backend's own (fp32 on the CPU)")
    group.add_argument("--cuda-graph", action="store_true", help="TensorRT / ort-cuda: replay the UNet call as a "
                                                                 "CUDA graph")
    group.add_argument("--cuda-option", action="append", default=[], metavar="NAME=VALUE",
                       help="ort-cuda: an ONNX Runtime CUDA provider option, e.g. prefer_nhwc=1 or "
                            "cudnn_conv_algo_search=HEURISTIC (repeatable)")
    group.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help=f"fuse a LoRA (.safetensors, diffusers or kohya layout) into the weights when {who} "
                            "loads, at SCALE (default 1; repeatable; ort-cpu and ort-cuda)")
    group.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                       help="a textual-inversion embedding (.pt, .bin, .safetensors) as a new prompt token, TOKEN or "
                            "the file's name (repeatable; ort-cpu and ort-cuda)")
    group.add_argument("--no-safety-checker", dest="safety_checker", action="store_false",
                       help=f"load {who} without its safety checker, where it has one (docs/safety-checker.md)")
    group.add_argument("--eraser", metavar="DIR", help="an eraser engine (LaMa, MI-GAN) loaded beside a diffusion one: "
                                                       "--masked-content eraser fills the mask with it first")


def load_options_from(args) -> LoadOptions:
    """LoadOptions from add_load_arguments' flags; LoRA and embedding paths absolute (a Ray replica may run
    elsewhere), each file opened and checked now, before any engine loads."""
    from .cuda_options import parse_cuda_option
    from .lora import lora_pairs
    from .textual_inversion import embedding_pairs

    cuda_options = dict(parse_cuda_option(text) for text in args.cuda_option) if args.cuda_option else None
    loras = [tuple(pair) for pair in lora_pairs(args.lora)] if args.lora else None
    embeddings = [tuple(pair) for pair in embedding_pairs(args.embedding)] if args.embedding else None
    eraser = str(Path(args.eraser).resolve()) if getattr(args, "eraser", None) else None
    return LoadOptions(args.backend, args.precision, args.cuda_graph, cuda_options, loras, embeddings,
                       args.safety_checker, eraser=eraser)
