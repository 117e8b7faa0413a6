"""LoRA files as people download them (LyCORIS's LoHa, LoKr, DoRA, full diffs, bias patches; integer
alphas; fp16 / bf16 / fp32 mixed) for the tiny checkpoints, each with the change its own formula gives,
written here in torch: the reference the engine's numpy fusion (engine/lora_variants.py) is checked
against. A Builder collects one file's tensors and, per layer, W' - W as a function of the file's scale."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from inpaintrt.engine.lora_keys import ldm_name

EPS = torch.finfo(torch.float32).eps


def kohya_name(component: str, module: str, sdxl: bool, unet_names: list[str]) -> str:
    """kohya's spelling of a layer: SDXL files name the UNet's blocks as LDM does (input_blocks_4_1_...)."""
    if component == "unet":
        per_block = 1 + max(int(m.split(".")[3]) for m in unet_names if m.startswith("down_blocks.0.resnets."))
        name = (ldm_name(module, unet_names, per_block) or module) if sdxl else module
        return "lora_unet_" + name.replace(".", "_")
    prefix = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + "text_model_" + module.removeprefix("text_model.").replace(".", "_")


class Builder:
    def __init__(self, pipe, seed: int):
        self.pipe, self.generator = pipe, torch.Generator().manual_seed(seed)
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.unet_names = [n for n, _ in pipe.unet.named_modules()]
        self.tensors: dict[str, torch.Tensor] = {}
        self.changes: dict = {}  # (component, module or module.bias) -> scale -> W' - W
        self.metadata: dict[str, str] = {}

    def rand(self, *shape, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * std

    def real(self, component: str, module: str) -> str:
        """The module's torch name (transformers' CLIPTextModelWithProjection keeps a `text_model.` prefix)."""
        names = dict(getattr(self.pipe, component).named_modules())
        return module if module in names else f"text_model.{module}"

    def layer(self, component: str, module: str):
        return getattr(self.pipe, component).get_submodule(self.real(component, module))

    def name(self, component: str, module: str, naming: str) -> str:
        if naming == "kohya":
            return kohya_name(component, module, self.sdxl, self.unet_names)
        return f"{component}.{module}"  # diffusers / peft

    def put(self, key: str, value: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Store `value` in `dtype`; what a reader gets back (the rounded values, as float32)."""
        self.tensors[key] = value.to(dtype).contiguous()
        return self.tensors[key].float()

    # --- the algorithms: each records its layer's change -------------------------------------------------
    def lora(self, component, module, rank=4, alpha=8.0, naming="kohya", dtypes=(torch.float32,) * 3,
             alpha_dtype=torch.float32, mid=False, dora=None, bias=False):
        """LoRA / LoCon (mid: LoCon's Tucker core); dora: "out" / "in" (LyCORIS's dora_scale axis) or "peft"
        (lora_magnitude_vector); bias: a lora_B.bias-style bias patch."""
        weight = self.layer(component, module).weight.detach()
        name, out, inputs, kernel = self.name(component, module, naming), weight.shape[0], weight.shape[1], weight.shape[2:]
        down_key, up_key = ((".lora_down.weight", ".lora_up.weight") if naming == "kohya"
                            else (".lora_A.weight", ".lora_B.weight"))
        if mid:
            core = self.put(f"{name}.lora_mid.weight", self.rand(rank, rank, *kernel, std=0.3), dtypes[2])
            down = self.put(name + down_key, self.rand(rank, inputs, 1, 1, std=0.3), dtypes[1])
            up = self.put(name + up_key, self.rand(out, rank, 1, 1, std=0.3), dtypes[0])
            delta = torch.einsum("ijkl,pi,jr->prkl", core, up.flatten(1), down.flatten(1))
        else:
            down = self.put(name + down_key, self.rand(rank, inputs, *kernel, std=0.15), dtypes[1])
            up = self.put(name + up_key, self.rand(out, rank, *([1] * len(kernel)), std=0.15), dtypes[0])
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        if naming == "kohya":
            alpha = float(self.put(f"{name}.alpha", torch.tensor(alpha), alpha_dtype))
        else:  # diffusers' adapter metadata: every layer of the component has this alpha
            self.metadata[f"{component}.lora_alpha"] = alpha
        delta = delta * alpha / rank
        if bias:
            patch = self.put(name + up_key.replace(".weight", ".bias"), self.rand(out, std=0.2))
            self.changes[(component, self.real(component, module) + ".bias")] = lambda s: s * alpha / rank * patch
        self.changes[(component, self.real(component, module))] = self._decomposed(name, weight, delta, dora)

    def _decomposed(self, name, weight, delta, dora):
        """W' - W as a function of the scale, with DoRA's renormalisation when asked for."""
        if dora is None:
            return lambda s: s * delta
        rest = [1] * (weight.dim() - 1)
        if dora == "in":  # LyCORIS's wd_on_out=False: a norm per input channel, dora_scale (1, in, ...)
            def norm(v):
                return v.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *rest[1:])
        else:
            def norm(v):
                return v.flatten(1).norm(dim=1).reshape(-1, *rest)
        magnitude = norm(weight) * (1 + 0.3 * self.rand(*norm(weight).shape, std=1.0).abs())
        if dora == "peft":  # peft: m / ||W + s dW|| (W + s dW); its conv magnitude is stored (1, out, 1, 1)
            stored = magnitude.reshape(-1) if weight.dim() == 2 else magnitude.reshape(1, -1, 1, 1)
            self.put(f"{name}.lora_magnitude_vector", stored)
            return lambda s: magnitude * (weight + s * delta) / norm(weight + s * delta) - weight
        self.put(f"{name}.dora_scale", magnitude)  # LyCORIS: W + s (m (W + dW) / (||W + dW|| + eps) - W)
        merged = weight + delta
        return lambda s: s * (magnitude * merged / (norm(merged) + EPS) - weight)

    def loha(self, component, module, rank=4, alpha=4.0, tucker=False, dora=None):
        weight = self.layer(component, module).weight.detach()
        name, out, inputs, kernel = self.name(component, module, "kohya"), weight.shape[0], weight.shape[1], weight.shape[2:]
        factors = []
        for i in (1, 2):
            if tucker:  # LyCORIS: t (rank, rank, kh, kw), a (rank, out), b (rank, in)
                t = self.put(f"{name}.hada_t{i}", self.rand(rank, rank, *kernel, std=0.5))
                a = self.put(f"{name}.hada_w{i}_a", self.rand(rank, out, std=0.5))
                b = self.put(f"{name}.hada_w{i}_b", self.rand(rank, inputs, std=0.5))
                factors.append(torch.einsum("ijkl,ip,jr->prkl", t, a, b))
            else:
                a = self.put(f"{name}.hada_w{i}_a", self.rand(out, rank, std=0.4))
                b = self.put(f"{name}.hada_w{i}_b", self.rand(rank, weight[0].numel(), std=0.4))
                factors.append(a @ b)
        alpha = float(self.put(f"{name}.alpha", torch.tensor(alpha)))
        delta = (factors[0] * factors[1]).reshape(weight.shape) * alpha / rank
        self.changes[(component, self.real(component, module))] = self._decomposed(name, weight, delta, dora)

    def lokr(self, component, module, split=2, rank=2, alpha=4.0, w1="full", w2="lowrank"):
        """kron(w1, w2); w1 (split, split) "full" or "lowrank"; w2 "full", "lowrank" or "tucker"."""
        weight = self.layer(component, module).weight.detach()
        name, kernel = self.name(component, module, "kohya"), weight.shape[2:]
        out, inputs = weight.shape[0] // split, weight.shape[1] // split
        decomposed = None
        if w1 == "full":
            one = self.put(f"{name}.lokr_w1", self.rand(split, split, std=0.5))
        else:
            one = self.put(f"{name}.lokr_w1_a", self.rand(split, rank, std=0.5)) @ self.put(
                f"{name}.lokr_w1_b", self.rand(rank, split, std=0.5))
            decomposed = rank
        if w2 == "full":
            two = self.put(f"{name}.lokr_w2", self.rand(out, inputs, *kernel, std=0.1))
        elif w2 == "tucker":
            two = torch.einsum("ijkl,ip,jr->prkl", self.put(f"{name}.lokr_t2", self.rand(rank, rank, *kernel, std=0.4)),
                               self.put(f"{name}.lokr_w2_a", self.rand(rank, out, std=0.4)),
                               self.put(f"{name}.lokr_w2_b", self.rand(rank, inputs, std=0.4)))
            decomposed = decomposed or rank
        else:
            two = (self.put(f"{name}.lokr_w2_a", self.rand(out, rank, std=0.3))
                   @ self.put(f"{name}.lokr_w2_b", self.rand(rank, inputs * kernel.numel(), std=0.3)))
            two = two.reshape(out, inputs, *kernel)
            decomposed = decomposed or rank
        alpha = float(self.put(f"{name}.alpha", torch.tensor(alpha)))
        scale = alpha / decomposed if decomposed else 1.0  # LyCORIS: 1 when both factors are full
        delta = torch.kron(one.reshape(split, split, *[1] * len(kernel)), two.contiguous()) * scale
        self.changes[(component, self.real(component, module))] = lambda s: s * delta

    def full(self, component, module, with_bias=True):
        layer = self.layer(component, module)
        name = self.name(component, module, "kohya")
        diff = self.put(f"{name}.diff", self.rand(*layer.weight.shape, std=0.05))
        self.changes[(component, self.real(component, module))] = lambda s: s * diff
        if layer.bias is not None and with_bias:
            diff_b = self.put(f"{name}.diff_b", self.rand(*layer.bias.shape, std=0.2))
            self.changes[(component, self.real(component, module) + ".bias")] = lambda s: s * diff_b

    # --- the file and the reference -----------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        from safetensors.torch import save_file

        metadata = {}
        if self.metadata:
            metadata["lora_adapter_metadata"] = json.dumps(self.metadata)
        save_file(self.tensors, str(path), metadata=metadata or None)
        return path

    def deltas(self, scale: float) -> dict:
        return {target: change(scale) for target, change in self.changes.items()}


def apply_deltas(pipe, deltas: dict) -> None:
    """Set the torch modules' weights (and biases) to W + (W' - W): diffusers with the file fused by hand."""
    with torch.no_grad():
        for (component, module), delta in deltas.items():
            layer, _, kind = module.rpartition(".") if module.endswith(".bias") else (module, "", "weight")
            tensor = getattr(getattr(pipe, component).get_submodule(layer), kind)
            tensor.add_(delta.reshape(tensor.shape))
