"""W0's top singular factors, cached per base fingerprint: the geometry analysis and the orthogonality lever of
training both compare updates with the same subspaces, and a large model's SVDs are worth computing once."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from orthopatch.analysis.geometry import Factors, top_singular
from orthopatch.models.embedded import cache_root


def cached_top_singular(base_fp: str, name: str, W0: torch.Tensor, k: int) -> Factors:
    """W0's top-k singular triplets, cached per base fingerprint (they are reused by every patch of that base)."""
    path = cache_root() / "geometry" / base_fp[:16] / f"{name}.k{k}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return Factors(t["U"], t["S"], t["V"])
    factors = top_singular(W0, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"U": factors.U.contiguous(), "S": factors.S.contiguous(), "V": factors.V.contiguous()}, str(tmp))
    tmp.replace(path)
    return factors
