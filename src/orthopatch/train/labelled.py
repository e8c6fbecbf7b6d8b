"""The language-model head and the loss at labelled positions only.

Only assistant tokens carry labels (about a third of a refusal example), and the head (vocabulary x hidden; a fifth
of a 135M model's weights) with its softmax is the costliest layer per position; transformers' ``logits_to_keep``
projects just the positions asked for, through the model's own forward (so DDP/FSDP wrappers see a normal call).
The mean cross-entropy is the same as the full head's, to float tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orthopatch.models.generation import forward_accepts
from orthopatch.train.tokenize import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def labelled_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (rows, kept positions, vocabulary) and their targets: position t predicts label t+1, and the kept
    positions are those where any row has a label next (one set for the whole batch, as ``logits_to_keep`` takes)."""
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().flatten()
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if forward_accepts(model, "logits_to_keep"):
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][:, keep]
    return logits.float(), targets[:, keep]


def labelled_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over every labelled token of the batch (what ``model(**batch).loss`` gives)."""
    logits, targets = labelled_logits(model, batch)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
