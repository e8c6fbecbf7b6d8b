"""Head kind ``linear``: class-balanced, L2-regularised logistic regression on standardised features (torch's
L-BFGS: no new dependency, deterministic on the CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from orthopatch.errors import UserError
from orthopatch.models.probes import fit_logistic
from orthopatch.patches.gates.base import Head, check_number, check_vectors, standardisation
from orthopatch.patches.gates.registry import register_head


@register_head
class LinearHead(Head):
    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: float, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.weight, self.bias, self.mean, self.scale = weight, bias, mean, scale

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.float() - self.mean.to(features.device)) / self.scale.to(features.device)
        return z @ self.weight.to(features.device) + self.bias

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "mean": self.mean, "scale": self.scale}

    def config(self) -> dict[str, Any]:
        return {"bias": self.bias}

    @classmethod
    def fit(cls, X: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 300) -> LinearHead:
        mean, scale = standardisation(X)
        weight, bias = fit_logistic((X - mean) / scale, y, l2, steps=steps, balanced=True)
        return cls(weight.float(), bias, mean, scale)

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> LinearHead:
        check_vectors(tensors, ("weight", "mean", "scale"), path)
        weight, mean, scale = tensors["weight"], tensors["mean"], tensors["scale"]
        if weight.dim() != 1 or not weight.shape == mean.shape == scale.shape or not bool((scale > 0).all()):
            raise UserError("weight, mean and scale must be vectors of one length and scale must be positive",
                            path=path, field="scale")
        return cls(weight.float(), check_number(config, "bias", path), mean.float(), scale.float())
