"""Direct preference optimisation: the standard sigmoid loss of Rafailov et al. (TRL's ``loss_type="sigmoid"``) on
summed log-probabilities of the assistant tokens, with the base as the reference policy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orthopatch.train.labelled import labelled_logits
from orthopatch.train.objectives.base import Objective, TrainContext


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's labelled (assistant) tokens."""
    logits, labels = labelled_logits(model, batch)
    mask = labels != -100
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


class DPO(Objective):
    """Batches are interleaved (chosen, rejected) rows (see :func:`orthopatch.train.data.collate`)."""

    name = "dpo"
    needs_reference = True

    def __init__(self, beta: float) -> None:
        self.beta = beta

    @classmethod
    def build(cls, ctx: TrainContext) -> DPO | None:
        return cls(ctx.cfg.dpo.beta) if ctx.cfg.objective == "dpo" else None

    def loss(self, model, batch, reference, *, step):
        policy = sequence_logprobs(model, batch)
        ref = reference.run(model, lambda m: sequence_logprobs(m, batch))
        chosen, rejected = policy[0::2] - ref[0::2], policy[1::2] - ref[1::2]
        margin = self.beta * (chosen - rejected)
        stats = margin.detach()
        loss = -F.logsigmoid(margin).mean()
        return loss, {"dpo_loss": round(loss.item(), 6),
                      "reward_margin": round(float(stats.mean()) / self.beta, 6),
                      "reward_accuracy": round(float((stats > 0).float().mean()), 4)}
