"""LoRA file keys -> (component, diffusers module name), for the formats shared LoRAs come in.

- diffusers / peft (`save_lora_weights`): `unet.<module>.lora_A.weight` / `lora_B.weight`, with
  `text_encoder.` / `text_encoder_2.`; older diffusers files: `.lora.down.weight` / `.lora.up.weight`,
  attention-processor names (`attn1.processor.to_q_lora.down.weight`) and `lora_linear_layer`.
- kohya (`lora_unet_…`, `lora_te_…`, SDXL `lora_te1_…` / `lora_te2_…`): module names with every
  dot written as an underscore, `.lora_down.weight` / `.lora_up.weight` / `.alpha`. For SDXL kohya
  names the UNet's blocks as the original (LDM) code does (`input_blocks_4_1_…`).
- LyCORIS writes kohya's names with its algorithms' own endings: `.hada_w1_a` … (LoHa), `.lokr_w1` …
  (LoKr), `.lora_mid.weight` (LoCon's Tucker core), `.dora_scale` (DoRA), `.diff` / `.diff_b` (full);
  peft writes `.lora_magnitude_vector` (DoRA) and `.lora_B.bias` (lora_bias). engine/lora_variants.py
  turns each layer's parts into its change.

kohya's underscores are ambiguous (module names have underscores of their own), so names are
resolved by lookup: every module of the engine is spelled the way kohya would spell it, in
diffusers' and in LDM block names, and a key must be one of those spellings.
"""
from __future__ import annotations

import re


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this engine; the message names the key and the fix."""


# key endings -> the part of a layer's change they hold (engine/lora_variants.py)
ROLES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"), ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"), (".alpha", "alpha"),
    (".lora_mid.weight", "mid"), (".lora_B.bias", "up_bias"), (".lora_up.bias", "up_bias"), (".lora.up.bias", "up_bias"),
    ("_lora.up.bias", "up_bias"), (".lora_linear_layer.up.bias", "up_bias"), (".dora_scale", "dora_scale"),
    (".lora_magnitude_vector.weight", "magnitude"), (".lora_magnitude_vector", "magnitude"),
    (".diff", "diff"), (".diff_b", "diff_b"),
) + tuple((f".{part}", part) for part in (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"))
# endings of other algorithms' keys -> what they are, for the refusal
OTHER_ALGORITHMS = {"oft_blocks": "OFT", "oft_diag": "OFT", "oft_R": "BOFT", "on_input": "IA3", "w_norm": "a norm-layer patch",
                    "b_norm": "a norm-layer patch", "a1.weight": "GLoRA", "a2.weight": "GLoRA", "b1.weight": "GLoRA",
                    "b2.weight": "GLoRA", "lora_down.bias": "a LoRA down-projection bias", "lora_A.bias": "a LoRA "
                    "down-projection bias", "scalar": "a LyCORIS scalar"}
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# old attention-processor spellings -> the layer's own name (UNet, text encoder)
_PROCESSOR_NAMES = {"to_q": ("to_q", "q_proj"), "to_k": ("to_k", "k_proj"), "to_v": ("to_v", "v_proj"),
                    "to_out": ("to_out.0", "out_proj")}


def split_key(key: str) -> tuple[str, str] | None:
    """(layer spelling, "down" | "up" | "alpha") or None for a key of no known LoRA role."""
    for ending, role in ROLES:
        if key.endswith(ending):
            layer = key[: -len(ending)]
            if ending.startswith("_lora."):  # `attn1.processor.to_q_lora.down.weight`
                layer = layer + "_lora"
            return layer, role
    peft_named = re.fullmatch(r"(.+)\.lora_([AB])\.[^.]+\.(weight|bias)", key)  # peft with an adapter name
    if peft_named and (peft_named.group(2), peft_named.group(3)) != ("A", "bias"):
        role = {"A": "down", "B": "up"}[peft_named.group(2)]
        return peft_named.group(1), role + ("_bias" if peft_named.group(3) == "bias" else "")
    peft_named = re.fullmatch(r"(.+)\.(lora_magnitude_vector|hada_\w+|lokr_\w+)\.[^.]+(?:\.weight)?", key)
    if peft_named and (peft_named.group(2) == "lora_magnitude_vector" or f".{peft_named.group(2)}" in dict(ROLES)):
        return peft_named.group(1), "magnitude" if peft_named.group(2) == "lora_magnitude_vector" else peft_named.group(2)
    return None


def other_algorithm(key: str) -> str | None:
    """What a key of no known role belongs to, when it is another algorithm's (OFT, IA3, GLoRA, ...)."""
    for ending, name in OTHER_ALGORITHMS.items():
        if key.endswith("." + ending):
            return name
    return None


def canonical(component: str, module: str) -> str:
    """One spelling per module: text encoders' names lose `text_model.` (transformers 5 dropped that
    wrapper; files keep it) and old attention-processor names become the layer's."""
    if component != "unet":
        module = module.removeprefix("text_model.")
    match = re.fullmatch(r"(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora", module)
    if match:
        module = f"{match.group(1)}.{_PROCESSOR_NAMES[match.group(2)][0 if component == 'unet' else 1]}"
    return module.replace(".processor.", ".")


class KeyResolver:
    """Maps LoRA layer spellings to (component, canonical module) for one engine's modules."""

    def __init__(self, modules: dict[str, list[str]]):
        """modules: {component: [module names as the map holds them]}."""
        self.modules = {c: {canonical(c, m): m for m in names} for c, names in modules.items()}
        self.kohya = {}
        unet = list(self.modules.get("unet", {}))
        per_block = 1 + max((int(m.split(".")[3]) for m in unet if m.startswith("down_blocks.0.resnets.")), default=0)
        for component, names in self.modules.items():
            prefixes = [p for p, c in KOHYA_PREFIXES.items() if c == component]
            for name in names:
                spellings = {name, f"text_model.{name}"} if component != "unet" else {name}
                if component == "unet":
                    ldm = ldm_name(name, unet, per_block)
                    if ldm:
                        spellings.add(ldm)
                for spelling in spellings:
                    for prefix in prefixes:
                        self.kohya[prefix + spelling.replace(".", "_")] = (component, names[name])

    def resolve(self, layer: str) -> tuple[str, str] | None:
        if layer.startswith(tuple(KOHYA_PREFIXES)):
            return self.kohya.get(layer)
        for prefix in DIFFUSERS_PREFIXES:
            component = prefix[:-1]
            if layer.startswith(prefix) and component in self.modules:
                name = canonical(component, layer[len(prefix):])
                return (component, self.modules[component][name]) if name in self.modules[component] else None
        # no prefix (a peft model's own file): the component whose module it names, when only one does
        found = [(c, self.modules[c][canonical(c, layer)]) for c in self.modules if canonical(c, layer) in self.modules[c]]
        return found[0] if len(found) == 1 else None


def ldm_name(module: str, names: list[str], per_block: int) -> str | None:
    """The original (LDM / sgm) spelling of a diffusers UNet module, as SDXL kohya files use it;
    `per_block`: resnets per down block (LDM numbers a block's layers and its sampler in one run)."""
    parts = module.split(".")
    simple = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2"}
    if module in simple:
        return simple[module]
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":  # `op`, not `conv`, in LDM
            return ".".join([f"input_blocks.{1 + block * (per_block + 1) + per_block}.0.op"] + rest[1:])
        place = 1 + block * (per_block + 1) + index
        return ".".join([f"input_blocks.{place}.{0 if kind == 'resnets' else 1}"] + _resnet(kind, rest))
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        place = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, index))
        return None if place is None else ".".join([f"middle_block.{place}"] + _resnet(kind, rest))
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":  # after the resnet and, in blocks with attention, the transformer
            attention = any(m.startswith(f"up_blocks.{block}.attentions.") for m in names)
            return ".".join([f"output_blocks.{block * (per_block + 1) + per_block}.{2 if attention else 1}"] + rest)
        place = block * (per_block + 1) + index
        return ".".join([f"output_blocks.{place}.{0 if kind == 'resnets' else 1}"] + _resnet(kind, rest))
    return None


def _resnet(kind: str, rest: list[str]) -> list[str]:
    """A resnet's layers in LDM names; a transformer's keep theirs."""
    if kind != "resnets":
        return rest
    renamed = {"conv1": ["in_layers", "2"], "conv2": ["out_layers", "3"], "time_emb_proj": ["emb_layers", "1"],
               "conv_shortcut": ["skip_connection"]}
    return renamed.get(rest[0], rest[:1]) + rest[1:]
