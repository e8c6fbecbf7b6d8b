"""Linear probes on representations: L2-regularised logistic regression by full-batch L-BFGS in float64 (a dozen
lines of torch instead of a scikit-learn dependency; deterministic on the CPU). Used by the embedding refusal judge
and by the selective patch's gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-row loss weights giving each class (labels 0/1) half the total."""
    return torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 100, *, balanced: bool = False
                 ) -> tuple[torch.Tensor, float]:
    """Weights and bias minimising the logistic loss + l2/2 * |w|^2: the mean over rows, or, ``balanced``, each class
    weighted to half the total (so a rare class counts as much as a common one)."""
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    weights = balanced_weights(y) if balanced else None
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        if weights is None:
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y)
        else:
            loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weights).sum()
        loss = loss + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), float(b.detach())


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half); NaN if a side is empty."""
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).double().mean()
    ties = (positive[:, None] == negative[None, :]).double().mean()
    return float(greater + 0.5 * ties)
