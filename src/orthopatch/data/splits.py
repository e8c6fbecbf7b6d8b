"""Deterministic train/validation/test splits.

A record's split depends only on a hash of its normalised prompt (and a split seed), so the same prompt always lands in
the same split, however the data is ordered or subset. HarmBench is registered as test-only; any training prompt that
also appears among a run's evaluation prompts is dropped (and counted) by :func:`decontaminate`.
"""

from __future__ import annotations

from collections.abc import Iterable

from orthopatch.data.dedup import DuplicateIndex
from orthopatch.data.registry import Dataset, load_dataset
from orthopatch.data.schema import Record
from orthopatch.data.splitting import SPLITS, assign_split, split_records, unit_interval
from orthopatch.errors import UserError

__all__ = ["SPLITS", "assign_split", "decontaminate", "get_split", "named_split", "split_records", "unit_interval"]

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
    """Drop training records whose prompt also occurs in a held-out set, exactly or nearly (the same request with a
    word or its punctuation changed: :mod:`orthopatch.data.dedup`); return them and the number dropped."""
    index = DuplicateIndex(r.prompt for r in held_out)
    kept, dropped = [], 0
    for record in train:
        if index.matches(record.prompt):
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
