"""The objective interface: one term of the training loss, with the data and state it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from orthopatch.train.config import TrainConfig
from orthopatch.train.reference import Reference


@dataclass
class TrainContext:
    """What an objective may read while it is built: the config, the model being trained (LoRA layers attached),
    the tokenizer, the base's fingerprint and the run's provenance (an objective records its data there)."""

    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    base_fingerprint: str
    provenance: dict[str, Any]


class Objective:
    """A loss term. The first objective of a run is the main one (added as it is); every further one is added times
    its ``weight``. ``needs_reference``: it compares with the base (see :class:`Reference`); ``packs``: as the main
objective it takes packed batches (``input_ids``, ``position_ids``, ``labels``, no attention mask)."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = False
    # A main objective that only needs per-token losses can train on packed rows (see train/packing.py).
    packs: ClassVar[bool] = False
    weight: float = 1.0

    @classmethod
    def build(cls, ctx: TrainContext) -> Objective | None:
        """This objective for ``ctx.cfg``, or None where the config leaves it off (validating its own settings)."""
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor], reference: Reference | None, *, step: int
             ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """The term's value on this step (None: nothing to add) and what to log."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Runs after every optimizer step (e.g. a projection that keeps the update in a subspace)."""
