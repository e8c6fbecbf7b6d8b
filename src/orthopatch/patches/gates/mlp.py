"""Head kind ``mlp``: one hidden ReLU layer on standardised features, fitted like the linear head (class-balanced
logistic loss, L2 on the weights, full-batch L-BFGS in float64 from a fixed seed: deterministic on the CPU). It can
carve a region of feature space where a line cannot (harm in one topic, not in the words of another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orthopatch.errors import UserError
from orthopatch.models.probes import balanced_weights
from orthopatch.patches.gates.base import Head, check_number, check_vectors, standardisation
from orthopatch.patches.gates.registry import register_head

UNITS = 32


@register_head
class MLPHead(Head):
    kind = "mlp"

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: float, mean: torch.Tensor,
                 scale: torch.Tensor) -> None:
        self.w1, self.b1, self.w2, self.b2, self.mean, self.scale = w1, b1, w2, b2, mean, scale

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        device = features.device
        z = (features.float() - self.mean.to(device)) / self.scale.to(device)
        return torch.relu(z @ self.w1.to(device).T + self.b1.to(device)) @ self.w2.to(device) + self.b2

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w1": self.w1, "b1": self.b1, "w2": self.w2, "mean": self.mean, "scale": self.scale}

    def config(self) -> dict[str, Any]:
        return {"b2": self.b2}

    @classmethod
    def fit(cls, X: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 300) -> MLPHead:
        mean, scale = standardisation(X)
        z, y = ((X - mean) / scale).double(), y.double()
        generator = torch.Generator().manual_seed(0)
        w1 = (torch.randn(UNITS, X.shape[1], generator=generator, dtype=torch.float64) / X.shape[1] ** 0.5)
        w2 = torch.randn(UNITS, generator=generator, dtype=torch.float64) / UNITS ** 0.5
        params = [w1.requires_grad_(), torch.zeros(UNITS, dtype=torch.float64, requires_grad=True),
                  w2.requires_grad_(), torch.zeros((), dtype=torch.float64, requires_grad=True)]
        weights = balanced_weights(y)
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = torch.relu(z @ params[0].T + params[1]) @ params[2] + params[3]
            loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weights).sum()
            loss = loss + 0.5 * l2 * (params[0].square().sum() + params[2].square().sum())
            loss.backward()
            return loss

        optimizer.step(closure)
        w1, b1, w2, b2 = (p.detach() for p in params)
        return cls(w1.float(), b1.float(), w2.float(), float(b2), mean, scale)

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> MLPHead:
        check_vectors(tensors, ("w1", "b1", "w2", "mean", "scale"), path)
        w1, b1, w2, mean, scale = (tensors[k] for k in ("w1", "b1", "w2", "mean", "scale"))
        if w1.dim() != 2 or not b1.shape == w2.shape == (w1.shape[0],) or not mean.shape == scale.shape == (
                w1.shape[1],) or not bool((scale > 0).all()):
            raise UserError("w1 (units x features), b1, w2 (units), mean and scale (features) disagree in shape",
                            path=path, field="w1")
        return cls(w1.float(), b1.float(), w2.float(), check_number(config, "b2", path), mean.float(),
                   scale.float())
