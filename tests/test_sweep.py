"""The sweep on a tiny model: every cell trains and evaluates once, an interrupted sweep resumes without redoing
finished cells, and the summary, cost-to-target and figures are written."""

import json
import shutil

import pytest

from orthopatch.cli import main
from orthopatch.errors import UserError
from orthopatch.recipes.sweep import SweepConfig, cells, run_sweep

TINY = dict(n_harmful=2, attacks=["gcg"], n_attack=2, n_benign=4, n_trivia=2, n_perplexity=2, max_new_tokens=3)


def grid(tiny_model, out, data):
    return SweepConfig(model=str(tiny_model), output=str(out), preset=None, methods=["lora-sft", "full-sft"],
                       ranks=[2, 8], lrs=[5e-3], epochs=[1], data=[str(data)], max_examples=8, **TINY)


def test_grid_cells_and_presets(tiny_model, tmp_path):
    ids = [c["id"] for c in cells(grid(tiny_model, tmp_path, "d.jsonl"))]
    # full-sft has no rank, so the rank axis collapses for it
    assert ids == ["lora-sft-r2-mix0-lr0.005-ep1", "lora-sft-r8-mix0-lr0.005-ep1", "full-sft-mix0-lr0.005-ep1"]
    preset = cells(SweepConfig())
    assert {c["method"] for c in preset} == {"lora-sft", "full-sft", "lora-dpo", "full-dpo"}
    assert sorted(c["r"] for c in preset if c["method"] == "lora-sft" and c["mix"] == 0) == [1, 4, 8, 32]
    assert sorted(c["mix"] for c in preset if c["method"] == "full-sft") == [0.0, 0.25, 0.5]
    with pytest.raises(UserError, match="unknown preset"):
        cells(SweepConfig(preset="huge"))


def test_sweep_runs_resumes_and_summarises(tiny_model, refusal_jsonl, tmp_path, monkeypatch):
    cfg = grid(tiny_model, tmp_path / "sw", refusal_jsonl)
    trained = []
    import orthopatch.recipes.sweep as sweep_module

    real = sweep_module.train_patch

    def counting(train_cfg, **kwargs):
        trained.append(train_cfg.output)
        if len(trained) == 2 and not getattr(counting, "interrupted", False):
            counting.interrupted = True
            raise KeyboardInterrupt  # the sweep is killed during its second cell
        return real(train_cfg, **kwargs)

    monkeypatch.setattr(sweep_module, "train_patch", counting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, echo=lambda *_: None)
    first = tmp_path / "sw" / "cells" / "lora-sft-r2-mix0-lr0.005-ep1" / "cell.json"
    assert first.is_file() and not (tmp_path / "sw" / "sweep.json").exists()
    summary = run_sweep(cfg, echo=lambda *_: None)
    assert [t.split("/cells/")[1].split("/")[0] for t in trained] == [
        "lora-sft-r2-mix0-lr0.005-ep1", "lora-sft-r8-mix0-lr0.005-ep1", "lora-sft-r8-mix0-lr0.005-ep1",
        "full-sft-mix0-lr0.005-ep1"]  # the finished cell was not trained again
    rows = summary["rows"]
    assert [r["id"] for r in rows] == [c["id"] for c in cells(cfg)]
    assert all(r["tokens_trained"] > 0 and r["train_seconds"] > 0 and r["size_on_disk_mb"] > 0 for r in rows)
    assert rows[0]["trainable_parameters"] < rows[1]["trainable_parameters"] < rows[2]["trainable_parameters"]
    target = summary["cost_to_target"]
    assert target["lora_safety_only"]["cells"] == ["lora-sft-r8-mix0-lr0.005-ep1"]
    assert target["full_ratio_search"]["cells"] == ["full-sft-mix0-lr0.005-ep1"]
    out = tmp_path / "sw"
    for name in ("tradeoff", "ratio", "rank"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0 and (out / "figures" / f"{name}.csv").is_file()
    assert len((out / "sweep.csv").read_text().splitlines()) == 1 + 1 + 3
    trained.clear()
    run_sweep(cfg, echo=lambda *_: None)
    assert trained == []  # a finished sweep recomputes nothing
    with pytest.raises(UserError, match="another config"):
        run_sweep(SweepConfig(**{**vars(cfg), "max_examples": 4}), echo=lambda *_: None)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run_sweep(SweepConfig(**{**vars(cfg), "output": str(moved)}), echo=lambda *_: None)
    assert trained == []  # a copied sweep directory resumes where it is (reproduce reuses a standalone sweep)


def test_sweep_command(tiny_model, refusal_jsonl, tmp_path, capsys):
    code = main(["sweep", "--preset", "none", "--model", str(tiny_model), "--output", str(tmp_path / "s"),
                 "--set", "ranks=[2]", "--set", "lrs=[0.005]", "--set", "epochs=[1]", "--set",
                 f"data=[{refusal_jsonl}]", "--set", "max_examples=4", "--set", "n_harmful=2", "--set",
                 "attacks=[]", "--set", "n_benign=2", "--set", "n_trivia=2", "--set", "n_perplexity=2"])
    out = capsys.readouterr().out
    assert code == 0 and "lora-sft-r2" in out and "target (" in out
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"][0]["r"] == 2


def test_sweep_identity_ignores_the_output_path_and_the_spelling_of_the_embedded_model():
    from orthopatch.recipes.sweep import _identity

    assert _identity({"model": "embedded", "output": "a", "seed": 0}) == _identity({"model": None, "output": "b",
                                                                                   "seed": 0})
    assert _identity({"model": "x", "output": "a", "seed": 0}) != _identity({"model": "x", "output": "a", "seed": 1})
