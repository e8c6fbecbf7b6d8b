"""`orthopatch reproduce` end to end on a tiny model, and its HTML report opened in a real (headless) browser."""

import json
import os
from pathlib import Path

import pytest

from orthopatch.recipes.reproduce import ReproduceConfig, evaluate_claims, run_reproduce
from tests.browser import open_report

TINY_TRAIN = {"max_examples": 8, "batch_size": 4, "gate": {"max_per_set": 6, "layers": [0.5], "l2": [1e-2],
                                                           "wrap": 0.5}}
TINY_EVAL = dict(n_harmful=2, n_benign=4, n_trivia=2, n_perplexity=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def reproduced(tiny_model, tmp_path_factory):
    """The whole plan on a tiny model. A tiny random model answers only newlines, so the red-team attacks and
    DPO's rejected side get a fixed compliant-looking answer; evaluations generate for real."""
    import orthopatch.models.generation as generation
    import orthopatch.recipes.redteam as redteam

    def fake(model, tokenizer, prompts, **kwargs):
        return [f"Sure, here is how: step {i}." for i in range(len(prompts))]

    mp = pytest.MonkeyPatch()
    mp.setattr(generation, "generate", fake)
    mp.setattr(redteam, "generate", fake)
    out = tmp_path_factory.mktemp("reproduce") / "run"
    cfg = ReproduceConfig(model=str(tiny_model), output=str(out), geometry_prompts=2,
                          sweep={"max_examples": 8, "attacks": ["gcg"], "n_attack": 2, "epochs": [1], **TINY_EVAL},
                          redteam={"rounds": 2, "n_goals": 2, "n_eval_goals": 2, "epochs": 1, "n_benign": 4,
                                   "n_trivia": 2, "n_perplexity": 2, "max_new_tokens": 3},
                          domains={"max_examples": 4, "epochs": 1, "n_domain": 2, "n_prompts": 2, **TINY_EVAL},
                          selective={"families": ["naive", "gated"], "retain_ablation": False, "doses": [1.0],
                                     "n_val_harmful": 2, "n_val_attack": 1, "n_attack": 1, "n_sensitive": 1,
                                     "n_perplexity": 2, "n_harmful": 2, "n_benign": 2, "n_trivia": 2,
                                     "max_new_tokens": 2, "train": TINY_TRAIN})
    try:
        results = run_reproduce(cfg, echo=lambda *_: None, command="test")
    finally:
        mp.undo()
    return cfg, out, results


def test_reproduce_runs_every_step_and_judges_every_claim(reproduced):
    cfg, out, results = reproduced
    assert set(results["steps"]) == {"sweep", "geometry", "selective", "redteam", "domains", "judges"}
    report = (out / "report.html").read_text()
    assert "A selective safety patch" in report and "gate: linear probe on" in report and "chosen out-of-source" in report
    verdicts = {c["claim"]: c["verdict"] for c in results["claims"]}
    assert len(verdicts) == 7 and set(verdicts.values()) <= {"held", "did not hold"}
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 8 and ("did not hold" in html or "held" in html)
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained, inert


def test_reproduce_resumes_without_recomputing(reproduced, monkeypatch):
    cfg, out, results = reproduced
    import orthopatch.recipes.sweep as sweep

    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: calls.append(1))
    again = run_reproduce(cfg, echo=lambda *_: None)
    assert calls == [] and again["step_seconds_this_run"] == {}
    assert again["claims"] == results["claims"]


def test_claims_without_experiments_are_not_invented():
    assert evaluate_claims({}) == []


def test_report_renders_in_headless_chromium(reproduced, tmp_path):
    """The tiny model's report; ORTHOPATCH_REPORT_DIR=DIR checks a real run's instead (e.g. the embedded model's
    `orthopatch reproduce` output), with the same assertions."""
    given = os.environ.get("ORTHOPATCH_REPORT_DIR")
    out = Path(given) if given else reproduced[1]
    shown = open_report(out / "report.html", tmp_path, Path(os.environ.get("ORTHOPATCH_SCREENSHOT",
                                                                           tmp_path / "report.png")))
    assert len(shown["images"]) >= 8 and all(done and w > 0 and h > 0 for done, w, h in shown["images"])
    assert shown["errors"] == [] and shown["screenshot"].stat().st_size > 10_000
    assert "Claims" in shown["heading"]
    assert json.loads((out / "results.json").read_text())["format"] == "orthopatch-reproduce/1"
