"""The prompts a selective patch's gate is fitted on (train splits) and chosen with (validation splits).

Harmful requests from each registered harmful set, and benign ones from the contrast sets; copies of a share of them
wrapped in jailbreak templates, moved into the project's rephrasings, read without the chat template, spelt in an
obfuscated form (both classes alike, so that the form itself is no harm signal); the harmful requests rewritten
into other tenses, persons and registers; and **benign twins** of the harmful requests (the same activity with a
harmless intent, :mod:`orthopatch.data.twins`), so that a gate learns intent rather than topic. Every copy and twin
of a validation prompt comes from a template or generator of the validation split, never one fitted on.

Every prompt has a *source*: its set, a kind within it (the set's ``source_key``: a look-alike framing, a varied
benign category, a twin intent, a rewrite or obfuscation kind), or the family that wrapped it; validation leaves one
source out at a time (:mod:`orthopatch.train.gate_selection`), and a copy or twin is held out with its original's
set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from orthopatch.data.assemble import benign_prompts, training_records, wrapped_copies
from orthopatch.data.registry import REGISTRY, records_hash
from orthopatch.data.schema import Record, Unformatted
from orthopatch.data.splits import named_split, unit_interval
from orthopatch.data.twins import obfuscated_copies, rewrites_of, twins_of
from orthopatch.errors import UserError


class GateDataSettings(Protocol):
    """What the gate's data depends on (``orthopatch.train.config.GateSettings`` has these fields)."""

    harmful: list[str]
    benign: list[str]
    validation_harmful: list[str]
    validation_benign: list[str]
    fitting_benign: list[str]
    extra: list[str]
    wrap: float
    wrap_benign: bool
    wrap_max_chars: int
    validation_wrap_max_chars: int
    rephrase: float
    rephrase_benign: bool
    raw: float
    raw_text: list[str]
    twins: float
    rewrites: float
    obfuscate: float
    max_per_set: int | None


@dataclass
class GateData:
    """Prompts to fit on (train splits) and to choose with (validation splits), and where they came from. Every
    prompt has a *source* (``train_sources`` for the fitting rows, harmful first; the keys of ``validation_benign``
    and ``validation_harmful_sources`` for validation), so that validation can leave one source out at a time."""

    train_harmful: list[str]
    train_benign: list[str]
    validation_harmful: list[str]
    validation_benign: dict[str, list[str]]  # per source, so that the report can say where the gate errs
    provenance: dict[str, Any]
    train_sources: list[str] | None = None  # one per row of train_harmful + train_benign
    validation_harmful_sources: list[str] | None = None  # one per row of validation_harmful
    train_origins: list[str] | None = None  # the set each training row was drawn from (a wrapped copy's original)
    # validation pairs (row in validation_harmful, source in validation_benign, row there, the twin's family): a
    # harmful request and the benign twin written from it, for the gate's AUROC within pairs
    validation_pairs: list[tuple[int, str, int, str]] = field(default_factory=list)


def _capped(records: list[Record], cap: int | None) -> list[Record]:
    return records[:cap] if cap is not None else records


def source_of(name: str, record: Record) -> str:
    """A prompt's source: the family that changed it (a copy), else its set or the kind within the set that the
    set's spec names (``source_key``), so that a whole kind can be held out."""
    harmful = name == "harmful"
    if record.meta.get("unformatted"):
        return "unformatted " + ("harmful" if harmful else "benign")
    if "obfuscation" in record.meta:
        return "obfuscated/" + record.meta["obfuscation"] if harmful else "obfuscated benign"
    if "rewrite" in record.meta:
        return "rewritten/" + record.meta["rewrite"]
    if "intent" in record.meta:
        return "twins/" + record.meta["intent"]
    template = record.meta.get("template", "")
    if template.startswith("rephrase:"):
        return "rephrased/" + template.split(":")[1] if harmful else "rephrased benign"
    if template:
        return "wrapped " + ("harmful" if harmful else "benign")
    spec = REGISTRY.get(name.partition(":")[0])
    sub = record.meta.get(spec.source_key) if spec is not None and spec.source_key else None
    return f"{name}/{sub}" if sub else name


def _read(settings: GateDataSettings, name: str, split: str, benign: bool, seed: int, split_seed: int
          ) -> list[tuple[str, Record]]:
    if split != "train":
        records = named_split(name, split, split_seed)[1]
    elif benign:
        records = benign_prompts([name], split_seed, "gate.benign")[0]
    else:
        records = training_records([name], seed=seed, split_seed=split_seed)[0]  # decontaminated
    return [(name, dataclasses.replace(r, meta={**r.meta, "origin": name}))
            for r in _capped(records, settings.max_per_set)]


def _copies(settings: GateDataSettings, direct: list[Record], split: str, seed: int, split_seed: int,
            harmful: bool) -> list[Record]:
    """Wrapped, rephrased, obfuscated and unformatted copies of one class's direct prompts (benign ones only where
    the settings copy benign prompts too, and always in validation)."""
    chars = settings.wrap_max_chars if split == "train" else settings.validation_wrap_max_chars
    out: list[Record] = []
    if settings.wrap and (harmful or split != "train" or settings.wrap_benign):
        out += wrapped_copies(direct, settings.wrap, seed, split, split_seed, chars)
    if settings.rephrase and (harmful or split != "train" or settings.rephrase_benign):
        out += wrapped_copies(direct, settings.rephrase, seed, split, split_seed, chars, source="rephrasings")
    if settings.obfuscate:
        out += obfuscated_copies(direct, settings.obfuscate, split, seed)
    if settings.raw:
        out += unformatted_copies(direct, settings.raw, seed, split)
    return out


def _twins(settings: GateDataSettings, direct: list[Record], split: str, seed: int) -> tuple[list[Record],
                                                                                            list[Record]]:
    """(rewrites, twins) of a seeded share of the harmful direct prompts, from the generators of ``split``; a
    twin's origin is its original's set."""
    def chosen(share: float, salt: str) -> list[Record]:
        return [r for r in direct if unit_interval(f"{salt}:{split}:{r.id}", seed) < share]

    origin = {r.id: r.meta["origin"] for r in direct}
    rewrites = rewrites_of(chosen(settings.rewrites, "rewrite"), split) if settings.rewrites else []
    twins = twins_of(chosen(settings.twins, "twin"), split) if settings.twins else []
    return rewrites, [dataclasses.replace(t, meta={**t.meta, "origin": origin[t.meta["pair"]]}) for t in twins]


def split_records(settings: GateDataSettings, split: str, seed: int, split_seed: int
                  ) -> tuple[list[tuple[str, Record]], list[tuple[str, Record]]]:
    """(source, record) pairs of one split: harmful and benign, direct and copies, rewrites and twins. Each
    record's ``meta["origin"]`` names the set it was drawn from (for a copy or twin, its original's set)."""
    harmful_names = settings.harmful + (settings.validation_harmful if split != "train" else [])
    benign_names = settings.fitting_benign + (settings.validation_benign if split != "train" else [])
    harmful = [pair for n in harmful_names for pair in _read(settings, n, split, False, seed, split_seed)]
    benign = [pair for n in benign_names for pair in _read(settings, n, split, True, seed, split_seed)]
    direct = [r for _, r in harmful]
    direct_benign = [r for n, r in benign if n in settings.fitting_benign]
    rewrites, twins = _twins(settings, direct, split, seed)
    harmful += [("harmful", r) for r in _copies(settings, direct, split, seed, split_seed, True) + rewrites]
    benign += [("benign", r) for r in _copies(settings, direct_benign, split, seed, split_seed, False) + twins]
    benign += [(name, r) for name in settings.raw_text for r in raw_passages(name, split, split_seed,
                                                                              settings.max_per_set)]
    return [(source_of(n, r), r) for n, r in harmful], [(source_of(n, r), r) for n, r in benign]


def raw_passages(name: str, split: str, split_seed: int, cap: int | None) -> list[Record]:
    """A benign registered set's ``split``, each text read without the chat template."""
    dataset, records = named_split(name, split, split_seed)
    if dataset.spec.harmful:
        raise UserError(f"{name!r} holds harmful text; raw_text takes benign text sets", field="gate.raw_text")
    return [dataclasses.replace(r, prompt=Unformatted(r.prompt), meta={**r.meta, "origin": name})
            for r in _capped(records, cap)]


def unformatted_copies(records: list[Record], share: float, seed: int, split: str) -> list[Record]:
    """Copies of a seeded ``share`` of ``records`` read without the chat template (each keeps its origin)."""
    return [dataclasses.replace(r, id=f"{r.id}|unformatted", prompt=Unformatted(r.prompt),
                                meta={**r.meta, "unformatted": True})
            for r in records if unit_interval(f"unformatted:{split}:{r.id}", seed) < share]


def _pairs(harmful: list[tuple[str, Record]], benign: dict[str, list[Record]]) -> list[tuple[int, str, int, str]]:
    row = {r.id: i for i, (_, r) in enumerate(harmful)}
    return [(row[r.meta["pair"]], source, j, r.meta.get("family", "twins")) for source, records in benign.items()
            for j, r in enumerate(records) if "intent" in r.meta and r.meta.get("pair") in row]


def gate_data(settings: GateDataSettings, seed: int, split_seed: int) -> GateData:
    """The gate's prompts: each set's train split (and copies, rewrites and twins) to fit, validation split (and
    copies in validation-split templates and generators, never the training ones) to choose."""
    train_harmful, train_benign = split_records(settings, "train", seed, split_seed)
    val_harmful, val_benign_pairs = split_records(settings, "validation", seed, split_seed)
    val_benign: dict[str, list[Record]] = {}
    for source, record in val_benign_pairs:
        val_benign.setdefault(source, []).append(record)
    records = lambda pairs: [r for _, r in pairs]  # noqa: E731
    provenance = {"harmful": settings.harmful, "benign": settings.benign,
                  **({"validation_harmful": settings.validation_harmful} if settings.validation_harmful else {}),
                  **({"extra": settings.extra} if settings.extra else {}),
                  **({"raw": settings.raw, "raw_text": settings.raw_text} if settings.raw or settings.raw_text
                     else {}),
                  "validation_benign": settings.validation_benign, "wrap": settings.wrap,
                  "wrap_benign": settings.wrap_benign, "rephrase": settings.rephrase,
                  **({"rephrase_benign": settings.rephrase_benign} if settings.rephrase else {}),
                  **{k: getattr(settings, k) for k in ("twins", "rewrites", "obfuscate") if getattr(settings, k)},
                  "n_train": {"harmful": len(train_harmful), "benign": len(train_benign)},
                  "n_validation": {"harmful": len(val_harmful), **{k: len(v) for k, v in val_benign.items()}},
                  "train_sha256": records_hash(records(train_harmful + train_benign)),
                  "validation_sha256": records_hash(records(val_harmful))}
    return GateData([r.prompt for _, r in train_harmful], [r.prompt for _, r in train_benign],
                    [r.prompt for _, r in val_harmful], {k: [r.prompt for r in v] for k, v in val_benign.items()},
                    provenance, [s for s, _ in train_harmful + train_benign], [s for s, _ in val_harmful],
                    [r.meta["origin"] for _, r in train_harmful + train_benign], _pairs(val_harmful, val_benign))
