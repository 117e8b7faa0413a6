"""What each LoRA algorithm costs to fuse (engine/lora_variants.py, numpy) on one SD-sized layer: a
1280x1280x3x3 convolution (14.7 M weights, the largest of SD 1.5's UNet), best of a few runs.

    python benchmarks/lora_variants.py [--runs 3]

Prints one line per algorithm; a whole file costs about this per targeted layer of that size (a LoRA
over every layer of SD 1.5's UNet touches about 60 such layers' worth of weights).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from inpaintrt.engine.lora_variants import Layer, layer_delta

SHAPE = (1280, 1280, 3, 3)


def algorithms(rng) -> dict:
    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * 0.1

    return {
        "LoRA rank 32": {"down": r(32, 1280, 3, 3), "up": r(1280, 32, 1, 1)},
        "LoHa rank 16": {"hada_w1_a": r(1280, 16), "hada_w1_b": r(16, 11520), "hada_w2_a": r(1280, 16),
                         "hada_w2_b": r(16, 11520)},
        "LoHa rank 16, Tucker": {"hada_t1": r(16, 16, 3, 3), "hada_w1_a": r(16, 1280), "hada_w1_b": r(16, 1280),
                                 "hada_t2": r(16, 16, 3, 3), "hada_w2_a": r(16, 1280), "hada_w2_b": r(16, 1280)},
        "LoKr factor 8, rank 16": {"lokr_w1": r(8, 8), "lokr_w2_a": r(160, 16), "lokr_w2_b": r(16, 160 * 9)},
        "DoRA (LoRA rank 32)": {"down": r(32, 1280, 3, 3), "up": r(1280, 32, 1, 1),
                                "dora_scale": np.abs(r(1280, 1, 1, 1))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(SHAPE, dtype=np.float32) * 0.1
    for name, parts in algorithms(rng).items():
        layer = Layer("benchmark", {role: (role, value) for role, value in parts.items()})
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            layer_delta(layer, "conv", SHAPE, None, lambda rank: 1.0, 0.8, lambda: weight)
            best = min(best, time.perf_counter() - start)
        print(f"{name:24s} {best * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
