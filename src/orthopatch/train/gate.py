"""Fitting a selective patch's gate (:mod:`orthopatch.patches.gates`): a probe on features of harmful against
benign prompts (the frozen base's hidden states, a sentence encoder, a user's guard classifier, or several together;
a linear or MLP head), chosen (in source, or by leaving one source out at a time) and thresholded on validation
splits only.

Heads are fitted with torch's L-BFGS on standardised features (a few thousand rows of a few thousand features: no
new dependency, deterministic on the CPU). The hidden states of every candidate layer come from one forward pass per
batch that stops after the deepest candidate; text features read the same batches.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from orthopatch.data.gate_data import GateData
from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids
from orthopatch.models.probes import auroc
from orthopatch.patches.gate import decoder_layers, many_gate_inputs
from orthopatch.patches.gates import FEATURES, HEADS, Feature, Gate, GateInputs, PromptReader
from orthopatch.patches.gates.unformatted import ChatWrap
from orthopatch.train.config import GateSettings
from orthopatch.train.gate_selection import OperatingPoint, leave_one_source_out


@torch.no_grad()
def prompt_features(model, tokenizer, reader: PromptReader | None, prompts: list[str], features: list[Feature],
                    batch_size: int, progress: bool = False, wrap: ChatWrap | None = None
                    ) -> dict[str, torch.Tensor]:
    """Each feature's values for chat-formatted prompts, (n, dims) keyed by :func:`feature_key`, read batch by batch
    exactly as a gate reads them at run time (the hidden states of every layer from one partial pass; unformatted
    prompts as chat messages where the gate has a ``wrap``)."""
    ids = chat_prompt_ids(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    layers = sorted({layer for feature in features for layer in feature.layers})
    out: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="gate features", disable=not progress,
                      file=sys.stderr):
        chunk = order[start:start + batch_size]
        inputs = many_gate_inputs(model, [ids[i] for i in chunk], tokenizer.pad_token_id, layers, wrap)
        if reader is not None:
            inputs.texts = reader.texts(inputs.input_ids, inputs.attention)
        for feature in features:
            values = feature.extract(inputs).float().cpu()
            target = out.setdefault(feature_key(feature), torch.zeros(len(ids), values.shape[1]))
            target[chunk] = values
    return out


def feature_key(feature: Feature) -> str:
    return json.dumps(feature.config(), sort_keys=True)


def candidate_features(settings: GateSettings, layers: list[int]) -> list[tuple[Feature, ...]]:
    """Every feature combination ``settings.features`` names: ``kind`` or ``kind:argument``, joined by ``+``."""
    combos: list[tuple[Feature, ...]] = []
    for spec in settings.features:
        parts = []
        for part in spec.split("+"):
            kind, _, argument = part.partition(":")
            if kind not in FEATURES:
                raise UserError(f"unknown gate feature kind {kind!r}; choose from {', '.join(FEATURES)}",
                                field="gate.features")
            parts.append(FEATURES[kind].candidates(argument or None, layers, settings.poolings))
        combos += list(itertools.product(*parts))
    return combos


def check_features(settings: GateSettings) -> None:
    """Every model a gate's features name is there and readable (a guard's directory, weights, template and answer
    words), checked before any training: a UserError naming it otherwise."""
    candidate_features(settings, [1])


def evaluate_probe(gate: Gate, features: dict[str, torch.Tensor], harmful: str,
                   pairs: list[tuple[int, str, int, str]] = ()) -> dict[str, Any]:
    """Validation rates of a fitted probe: recall on harmful, false positives per benign set, AUROC; with
    ``pairs`` (harmful row, benign set, row there, twin family: a request and its benign twin) the AUROC between the
    paired requests and their twins per twin family, ``twin_auroc`` the lowest of them (the hardest family decides:
    twins that keep a request's opening are far harder than reframed questions, and an average hides them), and the
    share of pairs whose request scores above its twin."""
    scores = {name: gate.logits(x) for name, x in features.items()}
    benign = torch.cat([v for k, v in scores.items() if k != harmful])
    flagged = {name: round(float((v >= gate.threshold).float().mean()), 4) for name, v in scores.items()}
    report = {"recall": flagged[harmful],
              "false_positive_rate": round(float((benign >= gate.threshold).float().mean()), 4),
              "flagged_per_set": flagged, "auroc": round(auroc(scores[harmful], benign), 4)}
    if pairs:
        per_family = {}
        for family in sorted({p[3] for p in pairs}):
            these = [p for p in pairs if p[3] == family]
            requests = scores[harmful][sorted({p[0] for p in these})]
            twins = torch.stack([scores[name][j] for _, name, j, _ in these])
            per_family[family] = round(auroc(requests, twins), 4)
        report["twin_auroc"] = min(per_family.values())
        report["twin_auroc_per_family"] = per_family
        report["pairs_ordered"] = round(sum(float(scores[harmful][i] > scores[name][j]) for i, name, j, _ in pairs)
                                        / len(pairs), 4)
    return report


LOSO_STEPS = 100  # L-BFGS steps of each leave-one-source-out refit (standardised features converge fast)
# when a candidate's features learn (a fine-tuning per refit), sources are held out in this many folds rather than
# one at a time, for every candidate alike
LEARNED_FOLDS = 4


@dataclass
class _Matrices:
    """The fitting and validation rows of a gate fit: labels, sources, and every feature's values."""

    y: torch.Tensor
    y_val: torch.Tensor
    val_sources: list[str]
    bounds: list[int]  # validation rows: harmful, then each benign source
    train: dict[str, torch.Tensor]
    validation: dict[str, torch.Tensor]

    def of(self, features: tuple[Feature, ...], split: str) -> torch.Tensor:
        values = self.train if split == "train" else self.validation
        return torch.cat([values[feature_key(f)] for f in features], dim=1)


def _matrices(model, tokenizer, reader, settings: GateSettings, data: GateData, features: list[Feature],
              progress: bool, wrap: ChatWrap | None) -> _Matrices:
    read = lambda prompts: prompt_features(model, tokenizer, reader, prompts, features,  # noqa: E731
                                           settings.batch_size, progress, wrap)
    val_prompts = [data.validation_harmful, *data.validation_benign.values()]
    bounds = torch.tensor([0, *[len(g) for g in val_prompts]]).cumsum(0).tolist()
    y = _labels(data)
    y_val = torch.cat([torch.ones(len(data.validation_harmful)), torch.zeros(bounds[-1] - bounds[1])])
    val_sources = (data.validation_harmful_sources or []) + [s for s, g in data.validation_benign.items() for _ in g]
    return _Matrices(y, y_val, val_sources, bounds, read(data.train_harmful + data.train_benign),
                     read([p for group in val_prompts for p in group]))


def _fit_learning(combos: list[tuple[Feature, ...]], data: GateData, seed: int) -> list[tuple[Feature, ...]]:
    """The combinations with each feature kind that learns fitted once on the training prompts."""
    texts, labels = data.train_harmful + data.train_benign, _labels(data)
    fitted: dict[str, Feature] = {}
    for feature in {feature_key(f): f for combo in combos for f in combo if f.learns}.values():
        fitted[feature_key(feature)] = feature.fitted(texts, labels, seed)
    return [tuple(fitted.get(feature_key(f), f) for f in combo) for combo in combos]


def _labels(data: GateData) -> torch.Tensor:
    return torch.cat([torch.ones(len(data.train_harmful)), torch.zeros(len(data.train_benign))])


def _text_values(feature: Feature, texts: list[str]) -> torch.Tensor:
    inputs = GateInputs(torch.zeros((len(texts), 0), dtype=torch.long), torch.zeros((len(texts), 0)), texts=texts)
    return feature.extract(inputs).float()


def _learning_refit(gate: Gate, m: _Matrices, data: GateData, rows: torch.Tensor, seed: int, l2: float,
                    memo: dict):
    """For leaving sources out of a gate whose features learn: refit them (quickly) and the head on the kept rows;
    the other features keep their values. A learned feature's refit on the same rows is shared (``memo``) by every
    candidate that holds it, whatever its head or penalty."""
    texts = data.train_harmful + data.train_benign
    val_texts = [p for group in [data.validation_harmful, *data.validation_benign.values()] for p in group]
    fitting = rows.nonzero().flatten()

    def learned(feature: Feature, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Feature]:
        key = (feature_key(feature), tuple(index.tolist()))
        if key not in memo:
            chosen = [texts[i] for i in index.tolist()]
            refitted = feature.fitted(chosen, m.y[index], seed, quick=True)
            memo[key] = (_text_values(refitted, chosen), _text_values(refitted, val_texts), feature)
        return memo[key]  # (the refitted model itself is not kept: its values are all a fold needs)

    def refit(keep: torch.Tensor) -> tuple[Gate, torch.Tensor]:
        index = fitting[keep]
        parts = [learned(f, index) if f.learns else (m.of((f,), "train")[index], m.of((f,), "validation"), f)
                 for f in gate.features]
        X, X_val = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        return Gate([p[2] for p in parts], HEADS[gate.head.kind].fit(X, m.y[index], l2, LOSO_STEPS), 0.0), X_val
    return refit


def candidate_layers(model, settings: GateSettings) -> list[int]:
    """The decoder layers ``settings.layers`` names as fractions of the model's depth."""
    n_layers = len(decoder_layers(model))
    return sorted({min(n_layers - 1, max(1, round(f * n_layers))) for f in settings.layers})


def fit_gate(model, tokenizer, settings: GateSettings, data: GateData, progress: bool = False,
             seed: int = 0) -> Gate:
    """Fit every candidate probe (feature combination x data option x head x penalty) on the train prompts and
    choose one (the data options: :func:`data_options`). With ``selection="out-of-source"`` (and sources known): a
    low balanced error on sources left out of fitting (one at a time, or in folds when a candidate's features
    learn), each at the operating point set on the other sources' validation prompts (:mod:`gate_selection`);
    otherwise the fewest benign validation prompts flagged at the operating point, and the chosen probe's
    out-of-source error is measured all the same. Ties: the highest AUROC, then the earlier candidate. Out of
    source, the one-standard-error rule: see :func:`one_standard_error`."""
    start = time.perf_counter()
    combos = _fit_learning(candidate_features(settings, candidate_layers(model, settings)), data, seed)
    distinct = list({feature_key(f): f for combo in combos for f in combo}.values())
    reader = PromptReader.of(tokenizer) if any(f.reads_text for f in distinct) else None
    wrap = ChatWrap.of(tokenizer) if settings.unformatted == "as-chat" else None
    m = _matrices(model, tokenizer, reader, settings, data, distinct, progress, wrap)
    known = data.train_sources is not None
    loso = settings.selection == "out-of-source" and known
    val_names = ["harmful", *data.validation_benign]
    options = data_options(settings, data)
    operating = OperatingPoint(settings.recall, settings.max_benign_rate)
    refits: dict = {}  # learned features refitted without a fold of sources, shared across candidates
    # every candidate is held out the same way, so that their out-of-source errors compare: one source at a time, or
    # (when a candidate's features learn, a fine-tuning per refit) in folds of sources
    folds = LEARNED_FOLDS if any(f.learns for f in distinct) else None

    def out_of_source(gate: Gate, X: torch.Tensor, X_val: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
        head = HEADS[gate.head.kind]
        kept = rows.nonzero().flatten().tolist()
        refit = _learning_refit(gate, m, data, rows, seed, gate.info["l2"], refits) \
            if any(f.learns for f in gate.features) else None
        return leave_one_source_out(lambda X_, y_, l2_: head.fit(X_, y_, l2_, LOSO_STEPS), gate,
                                    (X, m.y[rows], [data.train_sources[i] for i in kept]),
                                    (X_val, m.y_val, m.val_sources), gate.info["l2"], operating,
                                    [(data.train_origins or data.train_sources)[i] for i in kept], refit, folds)

    candidates = []
    for index, features in enumerate(combos):
        X_all, X_val = m.of(features, "train"), m.of(features, "validation")
        val = {name: X_val[m.bounds[i]:m.bounds[i + 1]] for i, name in enumerate(val_names)}
        for option, (option_name, rows) in enumerate(options.items()):
            X = X_all[rows]
            for head_kind, l2 in itertools.product(settings.heads, settings.l2):
                gate = _probe(Gate(list(features), HEADS[head_kind].fit(X, m.y[rows], l2), 0.0, {}, reader, wrap),
                              val, operating, data.validation_pairs)
                gate.info = {"l2": l2, **({"data": option_name} if settings.extra else {}), **gate.info}
                key = (gate.info["validation"]["false_positive_rate"], -gate.info["validation"]["auroc"], index,
                       option, settings.heads.index(head_kind), l2)
                if loso:
                    gate.info["out_of_source"] = out_of_source(gate, X, X_val, rows)
                candidates.append((key, gate, features, rows))
    eligible = separating_twins(candidates, settings.min_twin_auroc)
    _, best, best_features, best_rows = one_standard_error(eligible) if loso else min(eligible, key=lambda c: c[0])
    if known and not loso:  # chosen in source; its out-of-source error is still measured and reported
        best.info["out_of_source"] = out_of_source(best, m.of(best_features, "train")[best_rows],
                                                   m.of(best_features, "validation"), best_rows)
    best.info = {**best.info, "fitted_on": data.provenance,
                 "selection": _selection(settings, loso, candidates, operating, len(eligible)),
                 "fit_seconds": round(time.perf_counter() - start, 1)}
    return best


def _probe(gate: Gate, val: dict[str, torch.Tensor], operating: OperatingPoint,
           pairs: list[tuple[int, str, int, str]]) -> Gate:
    """A fitted probe at its operating point on the validation prompts (harmful first, then each benign source),
    with its validation report in ``info``."""
    benign = torch.cat([x for name, x in val.items() if name != "harmful"])
    gate.threshold = operating.threshold(gate.logits(val["harmful"]), gate.logits(benign))
    gate.info = {"validation": evaluate_probe(gate, val, "harmful", pairs)}
    return gate


def data_options(settings: GateSettings, data: GateData) -> dict[str, torch.Tensor]:
    """The training rows each candidate probe is fitted on: all of them, and with ``extra`` also all but the extra
    data (the extra sets' prompts and their wrapped copies, the rephrased copies of either class) so that selection
    can leave it out."""
    every = torch.ones(len(data.train_harmful) + len(data.train_benign), dtype=torch.bool)
    if not settings.extra or data.train_sources is None:
        return {"all": every}
    extra_sets = set(settings.fitting_benign) - set(settings.benign)
    origins = data.train_origins or data.train_sources
    optional = torch.tensor([origin in extra_sets or ("rephrase" in settings.extra and source.startswith("rephrased"))
                             for source, origin in zip(data.train_sources, origins, strict=True)])
    return {"without extra": ~optional, "with extra": every}


def separating_twins(candidates: list, minimum: float) -> list:
    """The candidates whose AUROC between the harmful validation requests and their benign twins reaches
    ``minimum``; if none does, those with the highest (a gate that cannot tell a request from its twin is not
    chosen while one that can is there). Without twins in validation: all of them."""
    if not minimum or not all("twin_auroc" in c[1].info["validation"] for c in candidates):
        return candidates
    twin = lambda c: c[1].info["validation"]["twin_auroc"]  # noqa: E731
    passing = [c for c in candidates if twin(c) >= minimum]
    return passing or [c for c in candidates if twin(c) == max(map(twin, candidates))]


def one_standard_error(candidates: list) -> tuple:
    """Out-of-source selection: of the candidates whose balanced error on held-out sources is within one standard
    error (over sources) of the lowest, the one with the lowest error in source (then the highest AUROC). With a
    dozen sources the held-out errors of most candidates differ by less than their noise; the rule keeps what
    generalises as well as the best and errs least on what it was fitted on."""
    oos = lambda c: c[1].info["out_of_source"]  # noqa: E731
    lowest = min(candidates, key=lambda c: (oos(c)["balanced_error_out_of_source"], c[0]))
    bound = oos(lowest)["balanced_error_out_of_source"] + (oos(lowest)["standard_error_out_of_source"] or 0.0)
    eligible = [c for c in candidates if oos(c)["balanced_error_out_of_source"] <= bound + 1e-9]
    return min(eligible, key=lambda c: (oos(c)["balanced_error_in_source"], *c[0][1:]))


def _selection(settings: GateSettings, loso: bool, candidates: list, operating: OperatingPoint,
               n_eligible: int) -> dict[str, Any]:
    held = "in folds of sources" if any(g.info.get("out_of_source", {}).get("held_out", "").endswith("folds of sources")
                                        for _, g, _, _ in candidates) else "one at a time"
    rule = ("of the candidates within one standard error of the lowest balanced error (benign prompts flagged, "
            f"harmful missed) on sources left out of fitting {held}, the lowest balanced error in source"
            if loso else "fewest benign validation prompts flagged") + f", at {operating.describe()}; then the " \
        "highest AUROC"
    if settings.min_twin_auroc:
        rule = f"among the candidates separating the validation twins (twin AUROC >= {settings.min_twin_auroc:g}), " \
            + rule
    return {"rule": rule, "mode": "out-of-source" if loso else "in-source", "n_eligible": n_eligible,
            "candidates": [{"features": g.describe(), "kinds": "+".join(f.kind for f in g.features),
                            "layer": g.layer, "head": g.head.kind, "l2": g.info["l2"],
                            **({"data": g.info["data"]} if "data" in g.info else {}),
                            "false_positive_rate": g.info["validation"]["false_positive_rate"],
                            "auroc": g.info["validation"]["auroc"],
                            **({"twin_auroc": g.info["validation"]["twin_auroc"]}
                               if "twin_auroc" in g.info["validation"] else {}),
                            **({k: v for k, v in g.info["out_of_source"].items() if k != "sources"} if loso else {})}
                           for _, g, _, _ in candidates]}
