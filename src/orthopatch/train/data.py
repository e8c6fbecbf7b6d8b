"""Training examples: tokenised SFT examples (safety data, optionally mixed with general data answered by the base),
DPO preference pairs, and the base model's own answers that both need (generated once, cached next to the run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthopatch.data.assemble import benign_prompts
from orthopatch.data.schema import Record
from orthopatch.errors import UserError
from orthopatch.io import sha256_file, sha256_text, write_jsonl_atomic
from orthopatch.models import generation
from orthopatch.train.config import TrainConfig
from orthopatch.train.packing import pack_batch
from orthopatch.train.tokenize import TokenizedExample, pad_batch, tokenize_chat

# Base-model answers cached next to the run and kept in the output; not part of the patch's hashed files.
REJECTED = "dpo_rejected.jsonl"
GENERAL = "general_answers.jsonl"


@dataclass(frozen=True)
class PreferencePair:
    id: str
    chosen: TokenizedExample
    rejected: TokenizedExample


@dataclass
class TrainingSet:
    examples: list[TokenizedExample] | list[PreferencePair]
    provenance: dict[str, Any]
    # Files written next to the patch, outside its hashed files (base answers: never printed).
    side_files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def collate(batch: list, pad_id: int, pack_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch of examples, or with ``pack_tokens`` lay them end to end in rows of that many tokens
    (:func:`orthopatch.train.packing.pack_batch`); a batch of preference pairs becomes padded rows chosen, rejected,
    chosen, rejected, ... (interleaved, so that splitting a batch across processes keeps each pair together)."""
    if batch and isinstance(batch[0], PreferencePair):
        return pad_batch([row for pair in batch for row in (pair.chosen, pair.rejected)], pad_id)
    return pack_batch(batch, pad_id, pack_tokens) if pack_tokens else pad_batch(batch, pad_id)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The real (not padding) tokens of a collated batch."""
    return int(batch["token_mask" if "token_mask" in batch else "attention_mask"].sum())


def context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


def base_answers(model, tokenizer, records: list[Record], max_new_tokens: int, cache: Path, progress: bool,
                 desc: str) -> dict[str, str]:
    """The base model's own greedy answers to ``records``' prompts, generated once and cached at ``cache`` (reused
    by a resumed run). Used as DPO's rejected side (answers to harmful requests: never printed or logged, kept out
    of the patch's hashed files) and as self-distillation targets for benign data."""
    key = [[r.id, sha256_text(r.prompt)] for r in records]
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        if [[row["id"], row["prompt_sha256"]] for row in rows] == key and rows and \
                rows[0].get("max_new_tokens") == max_new_tokens:
            return {row["id"]: row["response"] for row in rows}
    was_training = model.training
    model.eval()
    answers = generation.generate(model, tokenizer, [r.prompt for r in records], max_new_tokens=max_new_tokens, batch_size=16,
                       progress=progress, desc=desc)
    model.train(was_training)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(cache, [{"id": r.id, "prompt_sha256": sha256_text(r.prompt), "response": text,
                                "max_new_tokens": max_new_tokens} for r, text in zip(records, answers, strict=True)])
    return {r.id: text for r, text in zip(records, answers, strict=True)}


def general_examples(cfg: TrainConfig, model, tokenizer, n_safety: int, cache: Path, progress: bool
                     ) -> tuple[list[Record], dict[str, Any], dict[str, str]]:
    """General data at ``cfg.mix_general``'s share: a seeded sample of benign prompts answered by the base itself
    (no instruction corpus ships offline) and user examples as given; returns (records, provenance, base answers)."""
    wanted = round(n_safety * cfg.mix_general / (1 - cfg.mix_general))
    to_answer, ready, sources = benign_prompts(cfg.general_data, cfg.split_seed, "general_data", answered=True)
    n_answer = len(to_answer)
    order = torch.randperm(n_answer + len(ready), generator=torch.Generator().manual_seed(cfg.seed + 11))
    picked = set(order.tolist()[:wanted])  # a seeded sample, kept in a stable order
    to_answer = [r for i, r in enumerate(to_answer) if i in picked]
    ready = [r for i, r in enumerate(ready, start=n_answer) if i in picked]
    answers = base_answers(model, tokenizer, to_answer, cfg.general_max_new_tokens, cache, progress,
                           "general answers (base)") if to_answer else {}
    general = [Record(id=r.id, prompt=r.prompt, response=answers[r.id], meta={"target": "base answer"})
               for r in to_answer if answers[r.id].strip()] + ready
    provenance = {"general_share": cfg.mix_general, "wanted": wanted, "n_general": len(general),
                  "n_safety": n_safety, "skipped_empty_answers": len(to_answer) + len(ready) - len(general),
                  "sources": sources, "answers_max_new_tokens": cfg.general_max_new_tokens,
                  "answers_sha256": sha256_file(cache) if to_answer else None}
    return general, provenance, answers


def tokenize_records(records: list[Record], tokenizer, max_length: int, context: int | None
                     ) -> list[TokenizedExample]:
    return [tokenize_chat(tokenizer, r.chat(), max_length, r.id, context,
                          (r.meta["source"], r.meta["line"]) if "line" in r.meta else None) for r in records]


def preference_pairs(cfg: TrainConfig, model, tokenizer, records: list[Record], examples: list[TokenizedExample],
                     cache: Path, progress: bool) -> tuple[list[PreferencePair], dict[str, Any], dict[str, str]]:
    """DPO pairs: (prompt, refusal target) over (prompt, the base's own answer); a prompt the base left unanswered
    has no preference to learn and is skipped."""
    answers = base_answers(model, tokenizer, records, cfg.dpo.rejected_tokens, cache, progress,
                           "rejected answers (base)")
    context = context_length(model)
    pairs = []
    for record, chosen in zip(records, examples, strict=True):
        if not answers[record.id].strip():
            continue
        chat = [*record.chat()[:-1], {"role": "assistant", "content": answers[record.id]}]
        pairs.append(PreferencePair(record.id, chosen, tokenize_chat(tokenizer, chat, cfg.max_length, record.id,
                                                                     context)))
    if not pairs:
        raise UserError("no preference pairs: the base gave an empty answer to every training prompt")
    provenance = {"beta": cfg.dpo.beta, "rejected": "base model greedy answers",
                  "rejected_max_new_tokens": cfg.dpo.rejected_tokens, "pairs": len(pairs),
                  "skipped_empty_rejected": len(examples) - len(pairs), "rejected_sha256": sha256_file(cache)}
    return pairs, provenance, answers


def training_set(cfg: TrainConfig, model, tokenizer, records: list[Record], provenance: dict[str, Any],
                 cache_dir: Path, progress: bool) -> TrainingSet:
    """Everything the loop iterates over, from the safety records: general data mixed in, tokenised, paired."""
    side: dict[str, list[dict[str, Any]]] = {}
    if cfg.mix_general:
        general, provenance["mix"], answers = general_examples(cfg, model, tokenizer, len(records),
                                                               cache_dir / GENERAL, progress)
        records = records + general
        if answers:
            side[GENERAL] = [{"id": k, "response": v} for k, v in answers.items()]
    examples = tokenize_records(records, tokenizer, cfg.max_length, context_length(model))
    if cfg.objective == "dpo":
        examples, provenance["dpo"], answers = preference_pairs(cfg, model, tokenizer, records, examples,
                                                                cache_dir / REJECTED, progress)
        side[REJECTED] = [{"id": r.id, "response": answers[r.id]} for r in records]
    return TrainingSet(examples, provenance, side)
