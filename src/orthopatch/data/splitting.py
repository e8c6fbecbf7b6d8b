"""Which split a record belongs to: a hash of its normalised prompt and a split seed, or the split a
project-written set fixes in ``meta["split"]`` (by generator, framing or topic)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from orthopatch.data.dedup import normalise
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
