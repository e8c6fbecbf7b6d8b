"""Assemble a training set from registered datasets and user JSONL, with provenance for the run record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orthopatch.data.refusals import REFUSALS_VERSION, with_refusals
from orthopatch.data.registry import REGISTRY, load_dataset, records_hash
from orthopatch.data.schema import Record, load_user_jsonl
from orthopatch.data.splits import decontaminate, get_split, split_records
from orthopatch.errors import UserError
from orthopatch.io import sha256_file


def held_out_records(split_seed: int = 0) -> list[Record]:
    """Every prompt that any evaluation may use: all validation/test splits of the prompt and QA sets."""
    out: list[Record] = []
    for spec in REGISTRY.values():
        if spec.kind not in ("prompts", "qa"):
            continue
        splits = split_records(load_dataset(spec.name).records, spec.splits, split_seed)
        out.extend(splits["validation"] + splits["test"])
    return out


def training_records(
    data: list[str], *, seed: int, split_seed: int = 0, max_examples: int | None = None
) -> tuple[list[Record], dict[str, Any]]:
    """Records to train on, and provenance: per source its hash and count, and how many were decontaminated."""
    records: list[Record] = []
    sources: list[dict[str, Any]] = []
    for item in data:
        if item in REGISTRY:
            dataset = load_dataset(item)
            spec = dataset.spec
            split = get_split(dataset, "train", split_seed)
            if spec.kind == "prompts" and spec.harmful:
                chosen = with_refusals(split, seed)
                target = REFUSALS_VERSION
            elif spec.kind == "qa":
                chosen = [Record(id=r.id, prompt=r.prompt, response=r.reference, meta=r.meta) for r in split]
                target = "reference answers"
            else:
                raise UserError(f"dataset {item!r} ({spec.kind}) cannot be used as SFT data", field="data")
            sources.append({**dataset.source, "split": "train", "n_split": len(chosen), "targets": target})
            records.extend(chosen)
        elif item.endswith(".jsonl") or Path(item).exists():
            chosen = load_user_jsonl(item)
            sources.append({"name": item, "file_sha256": sha256_file(item), "n": len(chosen),
                            "records_sha256": records_hash(chosen), "targets": "as given"})
            records.extend(chosen)
        else:
            raise UserError(f"unknown dataset {item!r}: not a registered name ({', '.join(sorted(REGISTRY))}) "
                            f"and not a .jsonl file", field="data")
    records, dropped = decontaminate(records, held_out_records(split_seed))
    if max_examples is not None:
        records = records[:max_examples]
    if not records:
        raise UserError("the training set is empty", field="data")
    provenance = {"sources": sources, "decontaminated": dropped, "n_examples": len(records),
                  "records_sha256": records_hash(records), "split_seed": split_seed}
    return records, provenance
