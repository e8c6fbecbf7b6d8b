"""`orthopatch reproduce` end to end on a tiny model, and its HTML report opened in a real (headless) browser."""

import json
import os
import shutil
from pathlib import Path

import pytest

from orthopatch.recipes.reproduce import ReproduceConfig, evaluate_claims, run_reproduce

TINY_EVAL = dict(n_harmful=2, n_benign=4, n_trivia=2, n_perplexity=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def reproduced(tiny_model, tmp_path_factory):
    """The whole plan on a tiny model. A tiny random model answers only newlines, so the red-team attacks and
    DPO's rejected side get a fixed compliant-looking answer; evaluations generate for real."""
    import orthopatch.evaluate.generation as generation
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
                          domains={"max_examples": 4, "epochs": 1, "n_domain": 2, "n_prompts": 2, **TINY_EVAL})
    try:
        results = run_reproduce(cfg, echo=lambda *_: None, command="test")
    finally:
        mp.undo()
    return cfg, out, results


def test_reproduce_runs_every_step_and_judges_every_claim(reproduced):
    cfg, out, results = reproduced
    assert set(results["steps"]) == {"sweep", "geometry", "redteam", "domains", "judges"}
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
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh --dev installs them)")
    given = os.environ.get("ORTHOPATCH_REPORT_DIR")
    out = Path(given) if given else reproduced[1]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        driver.get((out / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) >= 8 and all(done and w > 0 and h > 0 for done, w, h in images), images
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        shot = Path(os.environ.get("ORTHOPATCH_SCREENSHOT", tmp_path / "report.png"))
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        assert "Claims" in driver.find_element("tag name", "h2").text
    finally:
        driver.quit()
    assert json.loads((out / "results.json").read_text())["format"] == "orthopatch-reproduce/1"
