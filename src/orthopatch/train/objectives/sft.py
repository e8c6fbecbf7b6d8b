"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens (the labels mask everything else),
the head computed at those positions only; it trains on packed or padded batches alike."""

from __future__ import annotations

from orthopatch.train.labelled import labelled_loss
from orthopatch.train.objectives.base import Objective, TrainContext


class SFT(Objective):
    name = "sft"
    packs = True

    @classmethod
    def build(cls, ctx: TrainContext) -> SFT | None:
        return cls() if ctx.cfg.objective == "sft" else None

    def loss(self, model, batch, reference, *, step):
        loss = labelled_loss(model, batch)
        return loss, {"sft_loss": round(loss.item(), 6)}
