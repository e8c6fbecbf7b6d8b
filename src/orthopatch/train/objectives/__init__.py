"""Training objectives, by name. A new objective is one file here with an :class:`Objective` subclass and one entry
in :data:`OBJECTIVES`; the order of the registry is the order the terms are added to the loss (the main objective,
``sft`` or ``dpo``, first)."""

from __future__ import annotations

from orthopatch.train.objectives.base import Objective, TrainContext
from orthopatch.train.objectives.dpo import DPO
from orthopatch.train.objectives.ortho import Orthogonality
from orthopatch.train.objectives.retain import RetainKL
from orthopatch.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "dpo": DPO, "retain": RetainKL, "ortho": Orthogonality}


def build_objectives(ctx: TrainContext) -> list[Objective]:
    """Every objective the config switches on, main objective first."""
    built = [cls.build(ctx) for cls in OBJECTIVES.values()]
    return [objective for objective in built if objective is not None]


__all__ = ["OBJECTIVES", "Objective", "TrainContext", "build_objectives"]
