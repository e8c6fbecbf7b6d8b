"""A gate's data and validation: the project's varied benign prompts and harmful rephrasings are split by
generator / template (a validation or test prompt never shares one with training), the gate's prompts carry their
sources, and leaving one source out never lets a held-out source into fitting (checked on ids)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from orthopatch.config import make
from orthopatch.data.gate_data import gate_data
from orthopatch.data.policy import CONTRAST
from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.data.templates import apply_template
from orthopatch.data.varied import GENERATORS, REPHRASINGS
from orthopatch.errors import UserError
from orthopatch.models.generation import Unformatted, chat_prompt_ids
from orthopatch.patches.gate import Gate
from orthopatch.patches.gates import HiddenStates, LinearHead
from orthopatch.train.config import TrainConfig
from orthopatch.train.gate import data_options, fit_gate, one_standard_error, separating_twins
from orthopatch.train.gate_selection import (
    OperatingPoint,
    benign_rate_threshold,
    error_table,
    kind_table,
    leave_one_source_out,
    recall_threshold,
    source_folds,
    summary,
)
from tests.conftest import build_tokenizer, train_gated_patch


def test_varied_benign_prompts_are_split_by_generator_and_cover_every_category():
    dataset = load_dataset("varied_benign")
    splits = {split: get_split(dataset, split) for split in ("train", "validation", "test")}
    generators = {split: {r.meta["generator"] for r in records} for split, records in splits.items()}
    assert not (generators["train"] & generators["validation"]) and not (generators["train"] & generators["test"])
    assert not (generators["validation"] & generators["test"])
    for split, records in splits.items():
        categories = Counter(r.meta["category"] for r in records)
        assert set(categories) == {*GENERATORS, "long_inputs"}, split  # every kind in every split
    styles = Counter(r.meta["style"] for r in dataset.records)
    assert len(styles) == 5 and min(styles.values()) >= 20
    long = [r for r in dataset.records if r.meta["category"] == "long_inputs"]
    assert min(len(r.prompt) for r in long) >= 200 and max(len(r.prompt) for r in long) >= 1000


def test_rephrasing_templates_are_split_by_template_and_render_the_request():
    dataset = load_dataset("rephrasings")
    by_split = {split: get_split(dataset, split) for split in ("train", "validation", "test")}
    assert {split: len(records) for split, records in by_split.items()} == {
        "train": len(REPHRASINGS), "validation": len(REPHRASINGS), "test": len(REPHRASINGS)}  # one per kind each
    for records in by_split.values():
        assert {r.meta["kind"] for r in records} == set(REPHRASINGS)
        for template in records:
            assert "PLACEHOLDER-REQUEST" in apply_template(template, "PLACEHOLDER-REQUEST").upper()


def test_gate_data_names_a_source_for_every_prompt_and_wraps_with_split_templates_only():
    settings = make(TrainConfig, gate={"enabled": True, "max_per_set": None, "rephrase": 0.5,
                                       "benign": [*CONTRAST, "varied_benign"]}).gate
    data = gate_data(settings, 0, 0)
    assert len(data.train_sources) == len(data.train_harmful) + len(data.train_benign)
    assert len(data.validation_harmful_sources) == len(data.validation_harmful)
    assert len(data.train_origins) == len(data.train_sources)
    copies = [o for s, o in zip(data.train_sources, data.train_origins, strict=True) if s.startswith("rephrased/")]
    assert copies and set(copies) <= set(settings.harmful)  # a copy remembers the set its original came from
    sources = set(data.train_sources)
    assert {"advbench", "wrapped harmful", "wrapped benign", "lookalikes/homonym"} <= sources
    assert {s for s in sources if s.startswith("rephrased/")} == {f"rephrased/{k}" for k in REPHRASINGS}
    benign_copies = [o for s, o in zip(data.train_sources, data.train_origins, strict=True) if s == "rephrased benign"]
    assert benign_copies and set(benign_copies) <= set(settings.benign)  # benign prompts in the same forms
    assert {s for s in sources if s.startswith("varied_benign/")} >= {f"varied_benign/{c}" for c in GENERATORS}
    validation = set(data.validation_benign) | set(data.validation_harmful_sources)
    assert {"rho_overrefusal", "wsr_benign", "varied_benign/long_inputs"} <= validation
    assert not set(data.train_harmful + data.train_benign) & set(data.validation_harmful + [
        p for group in data.validation_benign.values() for p in group])


def test_rephrased_benign_copies_can_be_left_out_of_fitting_but_not_of_validation():
    settings = make(TrainConfig, gate={"enabled": True, "max_per_set": 20, "rephrase": 0.5,
                                       "rephrase_benign": False}).gate
    data = gate_data(settings, 0, 0)
    assert "rephrased benign" not in data.train_sources and any(s.startswith("rephrased/") for s in data.train_sources)
    assert data.validation_benign["rephrased benign"]  # a gate that flags the form alone is still seen doing so
    assert "rephrase_benign" in data.provenance


def test_leaving_one_source_out_never_fits_on_it():
    """Each row's id is written into its features, so the spy sees exactly which rows each refit used."""
    generator = torch.Generator().manual_seed(0)
    train_sources = ["h1"] * 20 + ["h2"] * 20 + ["b1"] * 20 + ["b2"] * 20
    val_sources = ["h1"] * 8 + ["h2"] * 8 + ["b1"] * 8 + ["b2"] * 8 + ["only-val"] * 8
    X = torch.randn(80, 6, generator=generator)
    X[:, 0] = torch.arange(80).float()  # the row id
    y = torch.tensor([1.0] * 40 + [0.0] * 40)
    X[:, 1] += 3 * y
    Xv = torch.randn(40, 6, generator=generator)
    yv = torch.tensor([1.0] * 16 + [0.0] * 24)
    Xv[:, 1] += 3 * yv
    seen: list[set[str]] = []
    kept_rows: list[list[int]] = []

    def spy(X_, y_, l2):
        seen.append({train_sources[int(i)] for i in X_[:, 0].tolist()})
        kept_rows.append([int(i) for i in X_[:, 0].tolist()])
        return LinearHead.fit(X_, y_, l2, 50)

    full = Gate([HiddenStates([1], "last")], LinearHead.fit(X, y, 1e-2), 0.0)
    full.threshold = float(full.logits(Xv[:16]).sort().values[0])
    report = leave_one_source_out(spy, full, (X, y, train_sources), (Xv, yv, val_sources), 1e-2, 0.95)
    assert seen == [{"h2", "b1", "b2"}, {"h1", "b1", "b2"}, {"h1", "h2", "b2"}, {"h1", "h2", "b1"}]
    # copies of h1's prompts in another form ("h2" here) leave with h1
    origins = ["h1"] * 20 + ["h1"] * 5 + ["h2"] * 15 + ["b1"] * 20 + ["b2"] * 20
    seen.clear()
    kept_rows.clear()
    leave_one_source_out(spy, full, (X, y, train_sources), (Xv, yv, val_sources), 1e-2, 0.95, origins)
    assert seen[0] == {"h2", "b1", "b2"} and len(kept_rows[0]) == 55
    assert set(report["sources"]) == {"h1", "h2", "b1", "b2", "only-val"}
    only = report["sources"]["only-val"]
    assert only["n_train_held_out"] == 0 and only["out_of_source"] == only["in_source"]
    assert report["balanced_error_out_of_source"] is not None and "| **balanced mean** |" in error_table(report)


def test_a_learning_gate_is_refitted_once_per_fold_and_never_on_the_fold_it_judges():
    generator = torch.Generator().manual_seed(2)
    train_sources = ["h1"] * 10 + ["h2"] * 10 + ["h3"] * 10 + ["b1"] * 10 + ["b2"] * 10 + ["b3"] * 10
    val_sources = ["h1"] * 4 + ["h2"] * 4 + ["h3"] * 4 + ["b1"] * 4 + ["b2"] * 4 + ["b3"] * 4
    X, Xv = torch.randn(60, 3, generator=generator), torch.randn(24, 3, generator=generator)
    y, yv = torch.tensor([1.0] * 30 + [0.0] * 30), torch.tensor([1.0] * 12 + [0.0] * 12)
    X[:, 1] += 3 * y
    Xv[:, 1] += 3 * yv
    full = Gate([HiddenStates([1], "last")], LinearHead.fit(X, y, 1e-2), 0.0)
    refits: list[set[str]] = []

    def refit(keep):
        refits.append({s for s, k in zip(train_sources, keep.tolist(), strict=True) if not k})
        return full.with_head(LinearHead.fit(X[keep], y[keep], 1e-2, 20)), Xv

    report = leave_one_source_out(None, full, (X, y, train_sources), (Xv, yv, val_sources), 1e-2, 0.9, None, refit,
                                  folds=2)
    assert len(refits) == 2 and refits[0] | refits[1] == set(train_sources) and not refits[0] & refits[1]
    assert all({"h1", "h2", "h3"} & held and {"b1", "b2", "b3"} & held for held in refits)  # both classes per fold
    assert report["held_out"] == "2 folds of sources" and report["balanced_error_out_of_source"] is not None
    assert source_folds(["h1", "b1", "h2", "b2"], {"h1": True, "h2": True, "b1": False, "b2": False}, 2) == {
        "h1": frozenset({"h1", "b1"}), "b1": frozenset({"h1", "b1"}), "h2": frozenset({"h2", "b2"}),
        "b2": frozenset({"h2", "b2"})}


def test_the_default_gate_data_is_the_measured_recipe_s():
    """The new sources are opt-in: by default the gate sees what the shipped selective patch was measured with."""
    data = gate_data(make(TrainConfig, gate={"enabled": True, "max_per_set": 20}).gate, 0, 0)
    sources = set(data.train_sources) | set(data.validation_harmful_sources) | set(data.validation_benign)
    assert not any(s.startswith(("rephrased/", "varied_benign")) for s in sources)


def test_the_only_source_of_its_class_cannot_be_left_out():
    generator = torch.Generator().manual_seed(1)
    X, Xv = torch.randn(40, 4, generator=generator), torch.randn(20, 4, generator=generator)
    y, yv = torch.tensor([1.0] * 20 + [0.0] * 20), torch.tensor([1.0] * 10 + [0.0] * 10)
    full = Gate([HiddenStates([1], "last")], LinearHead.fit(X, y, 1e-2), 0.0)
    report = leave_one_source_out(lambda X_, y_, l2: LinearHead.fit(X_, y_, l2, 20), full,
                                  (X, y, ["h"] * 20 + ["b1"] * 10 + ["b2"] * 10),
                                  (Xv, yv, ["h"] * 10 + ["b1"] * 5 + ["b2"] * 5), 1e-2, 0.9)
    assert report["sources"]["h"]["out_of_source"] is None  # no harmful prompt would be left to fit on
    assert report["sources"]["b1"]["out_of_source"] is not None and report["harmful_miss_out_of_source"] is None
    assert "| h | harmful (missed) | 10 |" in error_table(report)


def test_out_of_source_selection_prefers_the_lower_in_source_error_within_one_standard_error():
    def candidate(index: int, oos: float, in_source: float, se: float = 0.05):
        gate = Gate([HiddenStates([1], "last")], LinearHead.fit(torch.eye(2), torch.tensor([1.0, 0.0]), 1.0), 0.0)
        gate.info = {"out_of_source": {"balanced_error_out_of_source": oos, "balanced_error_in_source": in_source,
                                       "standard_error_out_of_source": se}}
        return ((0.0, -1.0, index, 0, 1e-3), gate, ())

    pool = [candidate(0, 0.40, 0.30), candidate(1, 0.44, 0.10), candidate(2, 0.60, 0.00)]
    assert one_standard_error(pool)[0][2] == 1  # within 0.05 of the best out of source, and better in source
    assert one_standard_error([candidate(0, 0.40, 0.30, se=0.0), pool[1]])[0][2] == 0


def test_the_standard_error_of_the_out_of_source_mean_is_over_sources():
    per_source = {"h1": {"harmful": True, "in_source": 0.0, "out_of_source": 0.2},
                  "h2": {"harmful": True, "in_source": 0.0, "out_of_source": 0.4},
                  "b1": {"harmful": False, "in_source": 0.1, "out_of_source": 0.1},
                  "b2": {"harmful": False, "in_source": 0.1, "out_of_source": 0.3}}
    out = summary(per_source)
    assert out["balanced_error_out_of_source"] == 0.25
    expected = ((0.02 / 2 + 0.02 / 2) ** 0.5) / 2  # sample variance 0.02 per class, two sources each
    assert abs(out["standard_error_out_of_source"] - expected) < 1e-4


def test_without_its_extra_data_a_candidate_fits_on_none_of_it_and_is_judged_on_it_all_the_same():
    settings = make(TrainConfig, gate={"enabled": True, "max_per_set": 20, "rephrase": 0.5, "selection":
                                       "out-of-source", "extra": ["varied_benign", "trivia", "rephrase"]}).gate
    data = gate_data(settings, 0, 0)
    options = data_options(settings, data)
    assert list(options) == ["without extra", "with extra"] and bool(options["with extra"].all())
    rows = list(zip(data.train_sources, data.train_origins, strict=True))
    extra = [o in ("varied_benign", "trivia") or s.startswith("rephrased") for s, o in rows]
    assert any(extra) and options["without extra"].tolist() == [not e for e in extra]
    wrapped_extra = [s == "wrapped benign" and o in ("varied_benign", "trivia") for s, o in rows]
    assert any(wrapped_extra)  # a wrapped copy of an extra prompt leaves with it
    validation = set(data.validation_benign) | set(data.validation_harmful_sources)
    assert "trivia" in validation and any(s.startswith(("rephrased/", "varied_benign/")) for s in validation)
    plain = make(TrainConfig, gate={"enabled": True, "max_per_set": 20}).gate
    assert list(data_options(plain, gate_data(plain, 0, 0))) == ["all"]


def test_extra_data_needs_out_of_source_selection_and_a_rephrasing_share():
    with pytest.raises(UserError, match="out-of-source"):
        make(TrainConfig, gate={"enabled": True, "extra": ["trivia"]})
    with pytest.raises(UserError, match="rephrase"):
        make(TrainConfig, gate={"enabled": True, "selection": "out-of-source", "extra": ["rephrase"]})


def test_a_gate_is_chosen_with_or_without_its_extra_data_and_says_which(tiny_model, tmp_path):
    patch = train_gated_patch(tiny_model, tmp_path, selection="out-of-source", extra=["trivia"])
    info = json.loads((patch / "gate.json").read_text())
    tried = {c["data"] for c in info["selection"]["candidates"]}
    assert tried == {"without extra", "with extra"} and info["data"] in tried
    assert info["fitted_on"]["extra"] == ["trivia"] and "trivia" in info["out_of_source"]["sources"]


def test_unformatted_prompts_are_read_as_they_are():
    tokenizer = build_tokenizer()
    text = "a passage of plain prose"
    assert chat_prompt_ids(tokenizer, [Unformatted(text)]) == [tokenizer(text)["input_ids"]]
    assert chat_prompt_ids(tokenizer, [text]) != [tokenizer(text)["input_ids"]]  # a chat message is templated


def test_gate_data_reads_a_share_of_prompts_and_raw_text_passages_unformatted():
    settings = make(TrainConfig, gate={"enabled": True, "max_per_set": 20, "raw": 0.5, "unformatted": "as-is",
                                       "raw_text": ["book_cloze"]}).gate
    data = gate_data(settings, 0, 0)
    rows = list(zip(data.train_harmful + data.train_benign, data.train_sources, data.train_origins, strict=True))
    copies = [(s, o) for p, s, o in rows if s.startswith("unformatted ")]
    assert {s for s, _ in copies} == {"unformatted harmful", "unformatted benign"}
    assert {o for s, o in copies if s == "unformatted harmful"} <= set(settings.harmful)  # each keeps its origin
    assert all(isinstance(p, Unformatted) for p, s, _ in rows if s.startswith("unformatted ") or s == "book_cloze")
    assert sum(s == "book_cloze" for _, s, _ in rows) == 20
    assert not any(isinstance(p, Unformatted) for p, s, _ in rows if s == "advbench")
    validation = data.validation_benign
    assert len(validation["book_cloze"]) == 20 and all(isinstance(p, Unformatted) for p in validation["book_cloze"])
    assert "unformatted harmful" in data.validation_harmful_sources
    assert not {p for p, _, _ in rows} & set(validation["book_cloze"])  # passages split apart


def test_a_gate_fitted_with_raw_text_reports_its_error_on_it(tiny_model, tmp_path):
    patch = train_gated_patch(tiny_model, tmp_path, raw=0.5, raw_text=["book_cloze"], unformatted="as-is")
    info = json.loads((patch / "gate.json").read_text())
    assert info["fitted_on"]["raw_text"] == ["book_cloze"] and info["fitted_on"]["raw"] == 0.5
    assert "book_cloze" in info["validation"]["flagged_per_set"]


def test_raw_text_must_be_benign():
    settings = make(TrainConfig, gate={"enabled": True, "max_per_set": 5, "raw_text": ["advbench"]}).gate
    with pytest.raises(UserError, match="raw_text takes benign text sets"):
        gate_data(settings, 0, 0)


def test_the_operating_point_can_be_a_benign_budget():
    benign = torch.arange(100, dtype=torch.float32)
    for rate, flagged in ((0.05, 5), (0.0, 0), (0.2, 20), (0.999, 99)):
        threshold = OperatingPoint(0.95, rate).threshold(torch.zeros(3), benign)
        assert int((benign >= threshold).sum()) == flagged
    ties = torch.tensor([1.0] * 10 + [0.0] * 90)
    assert int((ties >= benign_rate_threshold(ties, 0.05)).sum()) == 0  # a tie is not split: at most the budget
    harmful = torch.arange(20, dtype=torch.float32)
    assert OperatingPoint(0.9).threshold(harmful, benign) == recall_threshold(harmful, 0.9)
    assert "at most 0.05" in OperatingPoint(0.95, 0.05).describe()


def test_a_candidate_that_cannot_tell_requests_from_their_twins_is_not_chosen():
    def candidate(twin_auroc):
        gate = Gate([HiddenStates([1], "last")], LinearHead(torch.ones(1), 0.0, torch.zeros(1), torch.ones(1)), 0.0)
        gate.info = {"validation": {"twin_auroc": twin_auroc}}
        return ((0.0,), gate, (), None)

    low, high, higher = candidate(0.6), candidate(0.9), candidate(0.95)
    assert separating_twins([low, high, higher], 0.85) == [high, higher]
    assert separating_twins([low, high], 0.99) == [high]  # none reaches it: the best at telling them apart
    assert separating_twins([low, high], 0.0) == [low, high]


def test_validation_reports_the_gate_within_pairs(tiny_model):
    from orthopatch.data.gate_data import GateData
    from orthopatch.models.loading import load_model

    model, tokenizer, _ = load_model(str(tiny_model), device="cpu")
    harmful = [f"Tell me how to do the forbidden thing number {i}." for i in range(24)]
    benign = [f"Tell me about the garden chores number {i}." for i in range(24)]
    data = GateData(harmful[:16], benign[:16], harmful[16:], {"twins/x": benign[16:]}, {},
                    validation_pairs=[(i, "twins/x", i, "kept opening" if i % 2 else "reframed") for i in range(8)])
    settings = make(TrainConfig, gate={"enabled": True, "layers": [0.5], "l2": [1e-2], "max_benign_rate": 0.125,
                                       "min_twin_auroc": 0.5}).gate
    gate = fit_gate(model, tokenizer, settings, data)
    report = gate.info["validation"]
    assert 0 <= report["twin_auroc"] <= 1 and 0 <= report["pairs_ordered"] <= 1
    assert set(report["twin_auroc_per_family"]) == {"kept opening", "reframed"}
    assert report["twin_auroc"] == min(report["twin_auroc_per_family"].values())
    assert report["false_positive_rate"] <= 0.125
    assert "at most 0.125" in gate.info["selection"]["rule"] and "twin AUROC >= 0.5" in gate.info["selection"]["rule"]


def test_the_kind_table_keeps_each_kind_s_best_candidate_out_of_source():
    candidates = [
        {"kinds": "hidden", "features": "layer 12", "false_positive_rate": 0.1, "balanced_error_in_source": 0.1,
         "balanced_error_out_of_source": 0.4, "twin_auroc": 0.7},
        {"kinds": "hidden", "features": "layer 16", "false_positive_rate": 0.2, "balanced_error_in_source": 0.2,
         "balanced_error_out_of_source": 0.3, "twin_auroc": 0.8},
        {"kinds": "tuned-encoder", "features": "MiniLM tuned", "false_positive_rate": 0.3},
    ]
    table = kind_table(candidates).splitlines()
    assert table[2] == "| hidden | layer 16 | 20.0% | 30.0% | 0.800 |"
    assert table[3] == "| tuned-encoder | MiniLM tuned | - | - | - |" and len(table) == 4


def test_the_hardest_twin_family_decides_the_twin_auroc():
    from orthopatch.train.gate import evaluate_probe

    class Scores:  # a gate whose score is the feature itself
        threshold = 0.5

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return x

    harmful = torch.tensor([0.9, 0.8, 0.7, 0.6])
    twins = torch.tensor([0.1, 0.2, 0.95, 0.99])  # reframed twins score low, kept-opening twins above their request
    pairs = [(0, "twins/a", 0, "reframed"), (1, "twins/a", 1, "reframed"), (2, "twins/a", 2, "kept opening"),
             (3, "twins/a", 3, "kept opening")]
    report = evaluate_probe(Scores(), {"harmful": harmful, "twins/a": twins}, "harmful", pairs)
    assert report["twin_auroc_per_family"] == {"kept opening": 0.0, "reframed": 1.0}
    assert report["twin_auroc"] == 0.0 and report["pairs_ordered"] == 0.5
