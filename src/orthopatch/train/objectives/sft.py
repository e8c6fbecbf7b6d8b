"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens (the labels mask everything else)."""

from __future__ import annotations

from orthopatch.train.objectives.base import Objective, TrainContext


class SFT(Objective):
    name = "sft"

    @classmethod
    def build(cls, ctx: TrainContext) -> SFT | None:
        return cls() if ctx.cfg.objective == "sft" else None

    def loss(self, model, batch, reference, *, step):
        loss = model(**batch).loss
        return loss, {"sft_loss": round(loss.item(), 6)}
