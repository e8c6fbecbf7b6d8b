"""The demo on a tiny model (smoke-sized): base, naive and selective side by side, a benign answer from each benign
set, the frontier of each recipe, a self-contained report.html that opens in headless Chromium."""

import json

from orthopatch.cli import main
from tests.browser import open_report


def test_quick_demo_runs_base_naive_and_selective_and_writes_its_report(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", str(tiny_model), "--output", str(out), "--quiet",
                 "--set", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["outputs"]) == {"base", "naive", "selective"}
    assert printed.count("benign prompt (") == 4 and f"report: {out / 'report.html'}" in printed
    manifests = {p.split("/")[-1]: json.loads((out / p.split("/")[-1] / "orthopatch.json").read_text())
                 for p in summary["patches"]}
    assert manifests["naive"]["kind"] == "lora" and manifests["selective"]["kind"] == "gated-lora"
    assert summary["training_cost"]["selective"]["gate_fit_seconds"] > 0
    frontier = (out / "figures" / "frontier.csv").read_text().splitlines()
    assert frontier[0] == "recipe,over_refusal,harmful_refusal,setting,shipped"
    assert any(line.startswith("naive (dose)") for line in frontier)
    assert any(line.startswith("selective (gate threshold)") for line in frontier)
    for label in ("base", "naive", "selective"):
        results = json.loads((out / f"eval-{label}" / "results.json").read_text())
        assert "harmbench" in results["metrics"]["harmful_refusal"]
    selective = json.loads((out / "eval-selective" / "results.json").read_text())
    assert "default" in selective["metrics"]["gate"]
    shown = open_report(out / "report.html", tmp_path)
    assert shown["images"] and all(done and w > 0 and h > 0 for done, w, h in shown["images"])
    assert shown["errors"] == [] and "Refusal against over-refusal" in shown["heading"]
    assert "Benign answers before and after" in shown["text"]
