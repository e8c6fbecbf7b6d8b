"""Fitting a selective patch's gate (:mod:`orthopatch.patches.gate`): a linear probe on the frozen base's hidden
states of harmful against benign prompts, chosen (by leaving one source out at a time) and thresholded on
validation splits only.

The probe is a class-balanced, L2-regularised logistic regression solved with torch's L-BFGS on standardised features
(a few thousand rows of a few thousand features: no new dependency, deterministic on the CPU). The features of every
candidate layer come from one forward pass per batch that stops after the deepest candidate.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from orthopatch.data.assemble import benign_prompts, training_records, wrapped_copies
from orthopatch.data.registry import records_hash
from orthopatch.data.schema import Record
from orthopatch.data.splits import named_split
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.models.probes import auroc, fit_logistic
from orthopatch.patches.gate import Gate, decoder_layers, layer_features, pool
from orthopatch.train.config import GateSettings
from orthopatch.train.gate_selection import leave_one_source_out


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


def _capped(records: list[Record], cap: int | None) -> list[Record]:
    return records[:cap] if cap is not None else records


def source_of(name: str, record: Record) -> str:
    """A prompt's source: its set, or the kind within a project-written set (so that a whole category can be held
    out), or the template family that wrapped it."""
    template = record.meta.get("template", "")
    if template.startswith("rephrase:"):
        return "rephrased/" + template.split(":")[1]
    if template:
        return "wrapped " + ("harmful" if name == "harmful" else "benign")
    sub = record.meta.get("category") if name == "varied_benign" else record.meta.get("kind") \
        if name == "lookalikes" else None
    return f"{name}/{sub}" if sub else name


def _split_records(settings: GateSettings, split: str, seed: int, split_seed: int
                   ) -> tuple[list[tuple[str, Record]], list[tuple[str, Record]]]:
    """(source, record) pairs of one split: harmful (direct, wrapped, rephrased) and benign (direct, wrapped). Each
    record's ``meta["origin"]`` names the set it was drawn from (for a wrapped copy, its original's set)."""
    def read(name: str, benign: bool) -> list[Record]:
        if split != "train":
            return named_split(name, split, split_seed)[1]
        if benign:
            return benign_prompts([name], split_seed, "gate.benign")[0]
        return training_records([name], seed=seed, split_seed=split_seed)[0]  # decontaminated

    def drawn(name: str, benign: bool) -> list[tuple[str, Record]]:
        return [(name, dataclasses.replace(r, meta={**r.meta, "origin": name}))
                for r in _capped(read(name, benign), settings.max_per_set)]

    benign_names = settings.benign + (settings.validation_benign if split != "train" else [])
    harmful = [pair for n in settings.harmful for pair in drawn(n, False)]
    benign = [pair for n in benign_names for pair in drawn(n, True)]
    direct = [r for _, r in harmful]
    chars = settings.wrap_max_chars if split == "train" else settings.validation_wrap_max_chars
    copies = [("harmful", r) for r in wrapped_copies(direct, settings.wrap, seed, split, split_seed,
                                                     chars)] if settings.wrap else []
    if settings.rephrase:
        copies += [("harmful", r) for r in wrapped_copies(direct, settings.rephrase, seed, split, split_seed, chars,
                                                          source="rephrasings")]
    if settings.wrap and (split != "train" or settings.wrap_benign):
        benign += [("benign", r) for r in wrapped_copies([r for n, r in benign if n in settings.benign],
                                                         settings.wrap, seed, split, split_seed, chars)]
    return [(source_of(n, r), r) for n, r in harmful + copies], [(source_of(n, r), r) for n, r in benign]


def gate_data(settings: GateSettings, seed: int, split_seed: int) -> GateData:
    """The gate's prompts: each set's train split (and wrapped and rephrased copies) to fit, validation split (and
    copies in validation-split templates, never the training ones) to choose."""
    train_harmful, train_benign = _split_records(settings, "train", seed, split_seed)
    val_harmful, val_benign_pairs = _split_records(settings, "validation", seed, split_seed)
    val_benign: dict[str, list[str]] = {}
    for source, record in val_benign_pairs:
        val_benign.setdefault(source, []).append(record.prompt)
    records = lambda pairs: [r for _, r in pairs]  # noqa: E731
    provenance = {"harmful": settings.harmful, "benign": settings.benign,
                  "validation_benign": settings.validation_benign, "wrap": settings.wrap,
                  "wrap_benign": settings.wrap_benign, "rephrase": settings.rephrase,
                  "n_train": {"harmful": len(train_harmful), "benign": len(train_benign)},
                  "n_validation": {"harmful": len(val_harmful), **{k: len(v) for k, v in val_benign.items()}},
                  "train_sha256": records_hash(records(train_harmful + train_benign)),
                  "validation_sha256": records_hash(records(val_harmful))}
    return GateData([r.prompt for _, r in train_harmful], [r.prompt for _, r in train_benign],
                    [r.prompt for _, r in val_harmful], val_benign, provenance,
                    [s for s, _ in train_harmful + train_benign], [s for s, _ in val_harmful],
                    [r.meta["origin"] for _, r in train_harmful + train_benign])


@torch.no_grad()
def prompt_features(model, tokenizer, prompts: list[str], layers: list[int], poolings: list[str], batch_size: int,
                    progress: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """Pooled hidden states of chat-formatted prompts, for every (layer, pooling): (n, hidden) each."""
    ids = chat_prompt_ids(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    out: dict[tuple[int, str], torch.Tensor] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="gate features", disable=not progress,
                      file=sys.stderr):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_pad([ids[i] for i in chunk], tokenizer.pad_token_id, device)
        hidden = layer_features(model, input_ids, attention, layers)
        for layer in layers:
            for pooling in poolings:
                pooled = pool(hidden[layer], attention, pooling).cpu()
                target = out.setdefault((layer, pooling), torch.zeros(len(ids), pooled.shape[1]))
                target[chunk] = pooled
    return out


def fit_probe(X: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 300) -> tuple[torch.Tensor, float,
                                                                                      torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression on standardised ``X``; returns (weight, bias, mean, scale)."""
    mean, scale = X.mean(0), X.std(0).clamp(min=1e-6)
    weight, bias = fit_logistic((X - mean) / scale, y, l2, steps=steps, balanced=True)
    return weight.float(), bias, mean.float(), scale.float()


def recall_threshold(positive: torch.Tensor, recall: float) -> float:
    """The highest threshold that flags at least ``recall`` of the positive scores."""
    ordered = positive.sort().values
    return float(ordered[int((1 - recall) * len(ordered) + 1e-9)])


def evaluate_probe(gate: Gate, features: dict[str, torch.Tensor], harmful: str) -> dict[str, Any]:
    """Validation rates of a fitted probe: recall on harmful, false positives per benign set, AUROC."""
    scores = {name: gate.logits(x) for name, x in features.items()}
    benign = torch.cat([v for k, v in scores.items() if k != harmful])
    flagged = {name: round(float((v >= gate.threshold).float().mean()), 4) for name, v in scores.items()}
    return {"recall": flagged[harmful], "false_positive_rate": round(float((benign >= gate.threshold).float().mean()),
                                                                     4),
            "flagged_per_set": flagged, "auroc": round(auroc(scores[harmful], benign), 4)}


LOSO_STEPS = 100  # L-BFGS steps of each leave-one-source-out refit (standardised features converge fast)


def fit_gate(model, tokenizer, settings: GateSettings, data: GateData, progress: bool = False) -> Gate:
    """Fit every candidate probe on the train prompts and choose one. With ``selection="out-of-source"`` (and
    sources known): the lowest balanced error on sources left out of fitting one at a time, each at the threshold
    that keeps ``settings.recall`` of the other sources' harmful validation prompts (:mod:`gate_selection`);
    otherwise the fewest benign validation prompts flagged at the threshold keeping ``settings.recall`` of the
    harmful ones, and the chosen probe's out-of-source error is measured all the same. Ties: the highest AUROC."""
    start = time.perf_counter()
    n_layers = len(decoder_layers(model))
    layers = sorted({min(n_layers - 1, max(1, round(f * n_layers))) for f in settings.layers})
    read = lambda prompts: prompt_features(model, tokenizer, prompts, layers, settings.poolings,  # noqa: E731
                                           settings.batch_size, progress)
    train = read(data.train_harmful + data.train_benign)
    val_names = ["harmful", *data.validation_benign]
    val_prompts = [data.validation_harmful, *data.validation_benign.values()]
    val_all = read([p for group in val_prompts for p in group])
    bounds = torch.tensor([0, *[len(g) for g in val_prompts]]).cumsum(0).tolist()
    y = torch.cat([torch.ones(len(data.train_harmful)), torch.zeros(len(data.train_benign))])
    known = data.train_sources is not None
    loso = settings.selection == "out-of-source" and known
    y_val = torch.cat([torch.ones(len(data.validation_harmful)), torch.zeros(bounds[-1] - bounds[1])])
    val_sources = (data.validation_harmful_sources or []) + [s for s, g in data.validation_benign.items() for _ in g]

    def out_of_source(gate: Gate, X: torch.Tensor) -> dict[str, Any]:
        return leave_one_source_out(lambda X_, y_, l2_: fit_probe(X_, y_, l2_, LOSO_STEPS), gate,
                                    (X, y, data.train_sources), (val_all[gate.layer, gate.pooling], y_val,
                                                                 val_sources),
                                    gate.info["l2"], settings.recall, data.train_origins)

    candidates = []
    for (layer, pooling), X in train.items():
        val = {name: val_all[layer, pooling][bounds[i]:bounds[i + 1]] for i, name in enumerate(val_names)}
        for l2 in settings.l2:
            weight, bias, mean, scale = fit_probe(X, y, l2)
            gate = Gate(layer, pooling, 0.0, weight, bias, mean, scale)
            gate.threshold = recall_threshold(gate.logits(val["harmful"]), settings.recall)
            report = evaluate_probe(gate, val, "harmful")
            gate.info = {"l2": l2, "validation": report}
            key = (report["false_positive_rate"], -report["auroc"], layer, pooling, l2)
            if loso:
                gate.info["out_of_source"] = out_of_source(gate, X)
                key = (gate.info["out_of_source"]["balanced_error_out_of_source"], *key[1:])
            candidates.append((key, gate))
    best = min(candidates, key=lambda c: c[0])[1]
    if known and not loso:  # chosen in source; its out-of-source error is still measured and reported
        best.info["out_of_source"] = out_of_source(best, train[best.layer, best.pooling])
    rule = ("the lowest balanced error (benign prompts flagged, harmful missed) on sources left out of fitting one "
            "at a time" if loso else "fewest benign validation prompts flagged") + \
        f", at the threshold keeping {settings.recall:g} of the harmful validation prompts; then the highest AUROC"
    best.info = {**best.info, "fitted_on": data.provenance, "selection": {
        "rule": rule, "mode": "out-of-source" if loso else "in-source",
        "candidates": [{"layer": g.layer, "pooling": g.pooling, "l2": g.info["l2"],
                        "false_positive_rate": g.info["validation"]["false_positive_rate"],
                        "auroc": g.info["validation"]["auroc"],
                        **({k: v for k, v in g.info["out_of_source"].items() if k != "sources"} if loso else {})}
                       for _, g in candidates]},
        "fit_seconds": round(time.perf_counter() - start, 1)}
    return best
