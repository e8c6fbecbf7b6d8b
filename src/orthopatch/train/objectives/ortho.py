"""The orthogonality lever (LoRA only): a penalty on the energy of ΔW = s·B·A inside W0's top-k singular subspaces,
and/or a projection that keeps A's rows out of W0's top-k right singular subspace after every step (exact)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer

from orthopatch.analysis.spectra import cached_top_singular
from orthopatch.train.objectives.base import Objective, TrainContext


@dataclass
class OrthoModule:
    A: torch.nn.Parameter  # (r, in)
    B: torch.nn.Parameter  # (out, r)
    scaling: float
    V: torch.Tensor  # W0's top-k right singular vectors (in, k)
    U: torch.Tensor  # W0's top-k left singular vectors (out, k)


def ortho_modules(peft_model, k: int, base_fingerprint: str) -> list[OrthoModule]:
    """For every LoRA layer: its factors and W0's top-k singular subspaces (cached per base fingerprint, the same
    cache the geometry analysis uses)."""
    out = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        W0 = module.get_base_layer().weight.detach().double()
        if getattr(module, "fan_in_fan_out", False):  # GPT-2 Conv1D stores (in, out)
            W0 = W0.T
        key = name.split("base_model.model.", 1)[-1]
        factors = cached_top_singular(base_fingerprint, key, W0, min(k, *W0.shape))
        A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
        out.append(OrthoModule(A, B, float(module.scaling["default"]), factors.V.to(A.dtype), factors.U.to(A.dtype)))
    return out


def ortho_penalty(modules: list[OrthoModule]) -> torch.Tensor:
    """Σ s²(‖B·(A·V_k)‖²_F + ‖(U_kᵀ·B)·A‖²_F), computed from the factors (ΔW is never formed)."""
    total = modules[0].A.new_zeros(())
    for m in modules:
        total = total + m.scaling**2 * ((m.B @ (m.A @ m.V)).square().sum() + ((m.U.T @ m.B) @ m.A).square().sum())
    return total


@torch.no_grad()
def project_out(modules: list[OrthoModule]) -> None:
    """Keep every A's rows in the complement of W0's top-k right singular subspace (ΔW·V_k = 0)."""
    for m in modules:
        m.A -= (m.A @ m.V) @ m.V.T


class Orthogonality(Objective):
    name = "ortho"

    def __init__(self, modules: list[OrthoModule], weight: float, project: bool) -> None:
        self.modules, self.weight, self.project = modules, weight, project

    @classmethod
    def build(cls, ctx: TrainContext) -> Orthogonality | None:
        settings = ctx.cfg.ortho
        if not settings.active:
            return None
        modules = ortho_modules(ctx.model, settings.k, ctx.base_fingerprint)
        if settings.project:
            project_out(modules)
        ctx.provenance["orthogonality"] = {"k": settings.k, "penalty_weight": settings.weight,
                                           "project_input_side": settings.project, "modules": len(modules)}
        return cls(modules, settings.weight, settings.project)

    def loss(self, model, batch, reference, *, step):
        if self.weight <= 0:
            return None
        penalty = ortho_penalty(self.modules)
        return penalty, {"ortho_energy": round(penalty.item(), 8)}

    def after_optimizer_step(self) -> None:
        if self.project:
            project_out(self.modules)
