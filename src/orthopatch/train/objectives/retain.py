"""Self-distillation retain term: KL(base || patched) of the next-token distribution over the prompt tokens of benign
prompts, with the frozen base as the teacher (no external answers needed). It keeps the patch from moving the model
where it should not: the first lever seen to separate harmful from benign on the embedded model (PROBES.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orthopatch.data.assemble import benign_prompts, wrapped_copies
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.train.batching import epoch_batches
from orthopatch.train.objectives.base import Objective, TrainContext
from orthopatch.train.tokenize import TokenizedExample, pad_batch


def prompt_batches(tokenizer, prompts: list[str], batch_size: int, max_length: int, seed: int,
                   group_by_length: bool = False) -> list[dict[str, torch.Tensor]]:
    """Fixed, seeded batches of chat-formatted prompts (input ids and attention mask), optionally of similar
    lengths (see :func:`orthopatch.train.batching.epoch_batches`)."""
    ids = [row[:max_length] for row in chat_prompt_ids(tokenizer, prompts)]
    lengths = [len(row) for row in ids] if group_by_length else None
    batches = []
    for indices in epoch_batches(len(ids), batch_size, seed, 0, lengths) if lengths else \
            _seeded_chunks(len(ids), batch_size, seed):
        rows = [TokenizedExample(str(i), ids[i], ids[i]) for i in indices]
        padded = pad_batch(rows, tokenizer.pad_token_id)
        batches.append({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    return batches


def _seeded_chunks(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """The retain batches' order: one permutation seeded once (``epoch_batches`` seeds per epoch), kept so that a
    retain patch keeps its recorded sha256 (tests/test_reference_hashes.py)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def kl_to_reference(model, reference, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over attended tokens of KL(base || patched)."""
    patched = F.log_softmax(model(**batch).logits.float(), dim=-1)
    base = F.log_softmax(reference.run(model, lambda m: m(**batch).logits).float(), dim=-1)
    per_token = (base.exp() * (base - patched)).sum(-1)
    return per_token[batch["attention_mask"].bool()].mean()


class RetainKL(Objective):
    name = "retain"
    needs_reference = True

    def __init__(self, batches: list[dict[str, torch.Tensor]], weight: float) -> None:
        self.batches, self.weight = batches, weight

    @classmethod
    def build(cls, ctx: TrainContext) -> RetainKL | None:
        settings = ctx.cfg.retain
        if not settings.data or settings.weight <= 0:
            return None
        registered, user, sources = benign_prompts(settings.data, ctx.cfg.split_seed, "retain.data")
        records = registered + user
        wrapped = wrapped_copies(records, settings.wrap, ctx.cfg.seed, "train", ctx.cfg.split_seed) \
            if settings.wrap else []
        prompts = [r.prompt for r in records + wrapped]
        ctx.provenance["retain"] = {"sources": sources, "weight": settings.weight, "n_prompts": len(prompts),
                                    "wrapped": {"share": settings.wrap, "n": len(wrapped),
                                                "templates": "pyrit_jailbreak_templates/train"}}
        return cls(prompt_batches(ctx.tokenizer, prompts, settings.batch_size, ctx.cfg.max_length, ctx.cfg.seed + 7,
                                  ctx.cfg.group_by_length), settings.weight)

    def loss(self, model, batch, reference, *, step):
        retain = {k: v.to(batch["input_ids"].device) for k, v in self.batches[step % len(self.batches)].items()}
        kl = kl_to_reference(model, reference, retain)
        return kl, {"retain_kl": round(kl.item(), 6)}
