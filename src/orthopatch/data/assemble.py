"""Assemble a training set from registered datasets and user JSONL, with provenance for the run record."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from orthopatch.data.refusals import REFUSALS_VERSION, with_refusals
from orthopatch.data.registry import REGISTRY, Dataset, load_dataset, records_hash
from orthopatch.data.schema import Record, load_user_jsonl
from orthopatch.data.splits import decontaminate, get_split, named_split, split_records
from orthopatch.data.templates import apply_template
from orthopatch.errors import UserError
from orthopatch.io import sha256_file


@cache
def held_out_records(split_seed: int = 0) -> list[Record]:
    """Every prompt that any evaluation may use: all validation/test splits of the prompt and QA sets."""
    out: list[Record] = []
    for spec in REGISTRY.values():
        if spec.kind not in ("prompts", "qa"):
            continue
        splits = split_records(load_dataset(spec.name).records, spec.splits, split_seed)
        out.extend(splits["validation"] + splits["test"])
    return out


def read_source(item: str, split_seed: int, field: str, *, prompts_only: bool = False
                ) -> tuple[Dataset | None, list[Record], dict[str, Any]]:
    """One training source: a registered name (``NAME[:SUBSET]``, its train split) or a user JSONL file (prompt and
    response, or only prompts); returns (dataset or None for a file, records, provenance)."""
    if item.partition(":")[0] in REGISTRY:
        dataset, records = named_split(item, "train", split_seed)
        source = {**dataset.source, "subset": item.partition(":")[2] or None, "split": "train"}
        return dataset, records, source
    if item.endswith(".jsonl") or Path(item).exists():
        records = load_user_jsonl(item, prompts_only=prompts_only)
        return None, records, {"name": item, "file_sha256": sha256_file(item), "n": len(records),
                               "records_sha256": records_hash(records)}
    raise UserError(f"unknown dataset {item!r}: not a registered name ({', '.join(sorted(REGISTRY))}) and not a "
                    ".jsonl file", field=field)


def training_records(
    data: list[str], *, seed: int, split_seed: int = 0, max_examples: int | None = None, shuffle: bool = False
) -> tuple[list[Record], dict[str, Any]]:
    """Records to train on, and provenance: per source its hash and count, and how many were decontaminated."""
    records: list[Record] = []
    sources: list[dict[str, Any]] = []
    for item in data:
        dataset, chosen, source = read_source(item, split_seed, "data")
        if dataset is None:
            target = "as given"
        elif dataset.spec.kind == "prompts" and dataset.spec.harmful:
            chosen, target = with_refusals(chosen, seed), REFUSALS_VERSION
        elif dataset.spec.kind == "qa":
            chosen = [Record(id=r.id, prompt=r.prompt, response=r.reference, meta=r.meta) for r in chosen]
            target = "reference answers"
        else:
            raise UserError(f"dataset {item!r} ({dataset.spec.kind}) cannot be used as SFT data", field="data")
        sources.append({**source, "n_split": len(chosen), "targets": target})
        records.extend(chosen)
    records, dropped = decontaminate(records, held_out_records(split_seed))
    if shuffle:  # a seeded order over all sources, so that a cap samples each of them
        records.sort(key=lambda r: hashlib.sha256(f"shuffle:{seed}:{r.id}".encode()).digest())
    if max_examples is not None:
        records = records[:max_examples]
    if not records:
        raise UserError("the training set is empty", field="data")
    provenance = {"sources": sources, "decontaminated": dropped, "n_examples": len(records),
                  "records_sha256": records_hash(records), "split_seed": split_seed}
    return records, provenance


def answerable(name: str, dataset: Dataset) -> bool:
    """Benign prompts, or a harmful set's subset of requests to answer with care (Do-Not-Answer's borderline
    areas): data a patch may learn to keep answering."""
    if dataset.spec.kind not in ("prompts", "qa"):
        return False
    subset = name.partition(":")[2]
    return not dataset.spec.harmful or subset in dataset.spec.meta.get("answerable_subsets", "").split(",")


def wrapped_copies(records: list[Record], share: float, seed: int, split: str, split_seed: int = 0,
                   max_chars: int = 1500, source: str = "pyrit_jailbreak_templates") -> list[Record]:
    """Copies of a seeded ``share`` of ``records`` wrapped in the templates of ``source`` (PyRIT's jailbreak
    templates, or the project's ``rephrasings``) of ``split`` (train for training data, validation for selection;
    evaluation reads the test split): harmful requests in jailbreak form, or benign ones ("adversarial benign",
    which keeps a patch from refusing the form instead of the request). Renderings longer than ``max_chars`` are
    left out."""
    templates = [t for t in get_split(load_dataset(source), split, split_seed)
                 if t.meta.get("parameters", ["prompt"]) == ["prompt"]]
    salt = "wrap" if source == "pyrit_jailbreak_templates" else f"wrap:{source}"  # PyRIT's salt keeps its copies' recorded hashes
    out = []
    for record in records:
        digest = hashlib.sha256(f"{salt}:{seed}:{split}:{record.id}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= share:
            continue
        template = templates[int.from_bytes(digest[8:16], "big") % len(templates)]
        text = apply_template(template, record.prompt)
        if len(text) <= max_chars:
            out.append(Record(id=f"{record.id}|{template.id}", prompt=text, response=record.response,
                              meta={**record.meta, "template": template.id}))
    return out


def benign_prompts(items: list[str], split_seed: int, field: str, *, answered: bool = False
                   ) -> tuple[list[Record], list[Record], list[dict[str, Any]]]:
    """Benign prompts for self-distillation (retain terms, general data): registered benign prompt or QA sets (train
    split) and user JSONL files (``{"prompt"}`` lines, or prompt and response with ``answered``), decontaminated
    against every evaluation prompt like any training data. Returns (registered prompts, user records, sources)."""
    registered: list[Record] = []
    user: list[Record] = []
    sources: list[dict[str, Any]] = []
    held_out = held_out_records(split_seed)
    for item in items:
        dataset, records, source = read_source(item, split_seed, field, prompts_only=not answered)
        if dataset is not None and not answerable(item, dataset):
            raise UserError(f"{field} must be benign prompts; {item!r} is not", field=field)
        records, dropped = decontaminate(records, held_out)
        sources.append({**source, "n_split": len(records), "decontaminated": dropped,
                        "targets": "base model" if dataset is not None or not answered else "as given"})
        (registered if dataset is not None else user).extend(records)
    return registered, user, sources


def augment_with_templates(records: list[Record], share: float, seed: int, max_chars: int = 1500,
                           split_seed: int = 0) -> tuple[list[Record], dict[str, Any]]:
    """Wrap a seeded ``share`` of the refusal-target examples in jailbreak templates from PyRIT's *train* split
    (SafeEdit-style safety data). Evaluation reads only the template test split, and the garak, GCG, prefix-injection,
    refusal-suppression and past-tense families never appear here, so those stay unseen attack families. Templates
    whose rendering exceeds ``max_chars`` are not used (the prompt would crowd out the answer; with this lever, train
    with ``max_length`` >= 512 tokens)."""
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
