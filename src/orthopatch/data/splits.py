"""Deterministic train/validation/test splits.

A record's split depends only on a hash of its normalised prompt (and a split seed), so the same prompt always lands in
the same split, however the data is ordered or subset. HarmBench is registered as test-only; any training prompt that
also appears among a run's evaluation prompts is dropped (and counted) by :func:`decontaminate`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from orthopatch.data.registry import Dataset, load_dataset, normalise
from orthopatch.data.schema import Record
from orthopatch.errors import UserError

SPLITS = ("train", "validation", "test")


def unit_interval(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed``: seeded, order-free choices of splits and shares."""
    digest = hashlib.sha256(f"orthopatch-split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(prompt: str, fractions: dict[str, float], seed: int = 0) -> str:
    u = unit_interval(normalise(prompt), seed)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return [name for name in SPLITS if fractions.get(name, 0.0) > 0][-1]


def split_records(records: Sequence[Record], fractions: dict[str, float], seed: int = 0) -> dict[str, list[Record]]:
    unknown = set(fractions) - set(SPLITS)
    if unknown or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise UserError(f"split fractions must be over {SPLITS} and sum to 1, got {fractions}")
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        # Project-written sets split by group (e.g. by framing and topic) and say so in the record itself.
        fixed = record.meta.get("split")
        out[fixed if fixed in SPLITS else assign_split(record.prompt, fractions, seed)].append(record)
    return out


def get_split(dataset: Dataset, split: str, seed: int = 0, limit: int | None = None) -> list[Record]:
    """The records of one split of a registered dataset, in a stable order, optionally the first ``limit``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if dataset.spec.splits.get(split, 0.0) == 0.0:
        allowed = ", ".join(s for s in SPLITS if dataset.spec.splits.get(s, 0.0) > 0)
        raise UserError(f"dataset {dataset.name!r} has no {split!r} split (it may be used for: {allowed})")
    records = split_records(dataset.records, dataset.spec.splits, seed)[split]
    # A stable pseudo-random order (by hash), so that a prefix is a fair sample rather than the file's first lines.
    records = sorted(records, key=lambda r: unit_interval("order:" + r.id, seed))
    return records[:limit] if limit is not None else records


def decontaminate(train: Iterable[Record], held_out: Iterable[Record]) -> tuple[list[Record], int]:
    """Drop training records whose prompt also occurs in a held-out set; return them and the number dropped."""
    blocked = {normalise(r.prompt) for r in held_out}
    kept, dropped = [], 0
    for record in train:
        if normalise(record.prompt) in blocked:
            dropped += 1
        else:
            kept.append(record)
    return kept, dropped


def named_split(name: str, split: str, seed: int = 0) -> tuple[Dataset, list[Record]]:
    """A registered dataset and one split of its records; ``NAME:SUBSET`` keeps only records with SUBSET among their
    meta values (e.g. ``donotanswer:malicious_uses``, a Do-Not-Answer risk area)."""
    base, _, subset = name.partition(":")
    dataset = load_dataset(base)
    records = get_split(dataset, split, seed)
    if subset:
        records = [r for r in records if subset in r.meta.values()]
        if not records:
            raise UserError(f"dataset {base!r} has no records in subset {subset!r} (split {split})")
    return dataset, records
