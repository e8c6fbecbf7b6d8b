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


def augment_with_templates(records: list[Record], share: float, seed: int, max_chars: int = 1500,
                           split_seed: int = 0) -> tuple[list[Record], dict[str, Any]]:
    """Wrap a seeded ``share`` of the refusal-target examples in jailbreak templates from PyRIT's *train* split
    (SafeEdit-style safety data). Evaluation reads only the template test split, and the garak, GCG, prefix-injection,
    refusal-suppression and past-tense families never appear here, so those stay unseen attack families. Templates
    whose rendering exceeds ``max_chars`` are not used (the prompt would crowd out the answer; with this lever, train
    with ``max_length`` >= 512 tokens)."""
    import hashlib

    from orthopatch.evaluate.attacks import apply_template

    if not 0 < share <= 1:
        raise UserError("augment_templates is a share of the refusal examples, in (0, 1]", field="augment_templates")
    templates = [t for t in get_split(load_dataset("pyrit_jailbreak_templates"), "train", split_seed)
                 if t.meta.get("parameters", ["prompt"]) == ["prompt"]]
    out, wrapped, too_long = [], 0, 0
    for record in records:
        digest = hashlib.sha256(f"augment:{seed}:{record.id}".encode()).digest()
        if record.meta.get("target") != "refusal" or int.from_bytes(digest[:8], "big") / 2**64 >= share:
            out.append(record)
            continue
        template = templates[int.from_bytes(digest[8:16], "big") % len(templates)]
        text = apply_template(template, record.prompt)
        if len(text) > max_chars:
            too_long += 1
            out.append(record)
            continue
        wrapped += 1
        out.append(Record(id=f"{record.id}|{template.id}", prompt=text, response=record.response,
                          meta={**record.meta, "template": template.id}))
    return out, {"share": share, "n_wrapped": wrapped, "n_template_too_long": too_long,
                 "templates": {"dataset": "pyrit_jailbreak_templates", "split": "train", "n": len(templates)},
                 "max_chars": max_chars, "records_sha256": records_hash(out)}
