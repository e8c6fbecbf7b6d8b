"""Benchmark: the LoRA geometry fast path (QR of B and Aᵀ, SVD of an r x r core) vs the dense route (form ΔW, full
SVD), side by side in one run on the same patch, with the agreement of every measure.

    python benchmarks/geometry_fast_path.py --patch runs/demo/patch            # a real patch on its base
    python benchmarks/geometry_fast_path.py                                    # synthetic SmolLM2-shaped factors
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from orthopatch.analysis.geometry import dense_svd, lora_delta_svd, module_geometry, top_singular


def synthetic(r: int, layers: int, seed: int = 0):
    """LoRA factors and base weights with SmolLM2-135M's projection shapes (out, in)."""
    shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
              "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
    g = torch.Generator().manual_seed(seed)
    for layer in range(layers):
        for name, (d_out, d_in) in shapes.items():
            yield (f"layers.{layer}.{name}", torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * 0.05,
                   torch.randn(r, d_in, generator=g, dtype=torch.float64) * 0.02,
                   torch.randn(d_out, r, generator=g, dtype=torch.float64) * 0.02, 2.0)


def from_patch(path: str, base: str | None):
    import json as _json
    from pathlib import Path

    from safetensors import safe_open

    from orthopatch.analysis.deltas import WeightReader
    from orthopatch.models.loading import resolve_model_path

    reader = WeightReader(resolve_model_path(base)[1])
    config = _json.loads((Path(path) / "adapter_config.json").read_text())
    with safe_open(str(Path(path) / "adapter_model.safetensors"), framework="pt") as handle:
        modules = sorted({k.split(".lora_A.")[0] for k in handle.keys() if ".lora_A." in k})  # noqa: SIM118
        for module in modules:
            A = handle.get_tensor(f"{module}.lora_A.weight").double()
            B = handle.get_tensor(f"{module}.lora_B.weight").double()
            name = module.removeprefix("base_model.model.")
            yield name, reader.get(reader.find(name)), A, B, config["lora_alpha"] / A.shape[0]


def disagreement(a, b) -> float:
    """The largest absolute difference between two measures: numbers, or lists of them (principal cosines)."""
    if isinstance(a, list):
        return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
    return abs(a - b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch")
    parser.add_argument("--base")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--k", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    modules = list(from_patch(args.patch, args.base) if args.patch else synthetic(args.r, args.layers))
    _, W0, A, B, scale = modules[0]  # warm-up (first-call costs of LAPACK and torch), not timed
    warm = top_singular(W0, max(args.k))
    module_geometry(warm, 1.0, lora_delta_svd(A, B, scale), A.shape[0], args.k, baselines=False)
    module_geometry(warm, 1.0, dense_svd(scale * B @ A), A.shape[0], args.k, baselines=False)
    fast_s = dense_s = 0.0
    worst = 0.0
    for _name, W0, A, B, scale in modules:
        r = A.shape[0]
        ks = sorted({r, *args.k})
        base = top_singular(W0, max(ks))  # shared by both routes, not timed
        fro = float(W0.norm())
        t = time.perf_counter()
        fast = module_geometry(base, fro, lora_delta_svd(A, B, scale), r, ks, baselines=False)
        fast_s += time.perf_counter() - t
        t = time.perf_counter()
        dense = module_geometry(base, fro, dense_svd(scale * B @ A), r, ks, baselines=False)
        dense_s += time.perf_counter() - t
        for k in fast["k"]:
            for key, value in fast["k"][k].items():
                worst = max(worst, disagreement(value, dense["k"][k][key]))
        for key in ("fro", "spectral", "stable_rank"):
            worst = max(worst, abs(fast[key] - dense[key]) / max(abs(dense[key]), 1e-12))
    result = {"modules": len(modules), "source": args.patch or f"synthetic r={args.r}",
              "fast_seconds": round(fast_s, 3), "dense_seconds": round(dense_s, 3),
              "speedup": round(dense_s / fast_s, 1), "max_abs_disagreement": worst,
              "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
