"""Lifelong red-teaming on a tiny model: every mode runs its rounds end to end and records what it should."""

import json

import pytest

from orthopatch.cli import main
from orthopatch.errors import UserError
from orthopatch.recipes.redteam import RedteamConfig, run_redteam
from orthopatch.train.config import LoraSettings


@pytest.fixture
def compliant_model(monkeypatch):
    """A tiny random model only emits newlines; the attacks (and DPO's rejected side) get a fixed compliant-looking
    answer instead, so that every round has prompts to patch. Evaluation still generates for real."""
    import orthopatch.models.generation as generation
    import orthopatch.recipes.redteam as redteam

    def fake(model, tokenizer, prompts, **kwargs):
        return [f"Sure, here is how: step {i}." for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", fake)
    monkeypatch.setattr(redteam, "generate", fake)


def test_every_mode_runs_its_rounds(tiny_model, tmp_path, compliant_model):
    cfg = RedteamConfig(model=str(tiny_model), output=str(tmp_path / "rt"), rounds=2,
                        modes=["stack", "merge", "continue", "full-dpo"], n_goals=3, n_eval_goals=2, n_benign=4,
                        n_trivia=2, n_perplexity=2, max_new_tokens=3, lora=LoraSettings(r=2, alpha=4), lr=5e-3,
                        dpo_lr=1e-3, epochs=1)
    record = run_redteam(cfg, echo=lambda *_: None)
    out = tmp_path / "rt"
    assert (out / "redteam.json").is_file() and (out / "rounds.png").stat().st_size > 0
    csv_rows = (out / "rounds.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4 * 3  # header + (base + 2 rounds) per mode
    for mode, rows in record["modes"].items():
        assert [r["round"] for r in rows] == [0, 1, 2]
        first, second = rows[1], rows[2]
        assert first["attack"]["families"] == ["direct"]
        assert second["attack"]["families"] == ["prefix_injection", "refusal_suppression"]
        assert first["attack"]["n_complied"] == 3 and second["attack"]["n_complied"] == 6
        assert set(second["asr_by_round"]) == {"1", "2"} and second["asr_earlier_rounds"] is not None
        assert first["training_cost"]["examples"] == 3
        manifest = json.loads((out / mode / "round-2" / "patch" / "orthopatch.json").read_text())
        assert manifest["method"] == ("full-dpo" if mode == "full-dpo" else "lora-sft")
        if mode in ("stack", "merge"):
            assert "round-1 vs round-2" in second["overlap_with_earlier"]
    seeds = [json.loads((out / "stack" / f"round-{k}" / "patch" / "orthopatch.json").read_text())["seed"]
             for k in (1, 2)]
    assert seeds[0] != seeds[1]  # one seed for all rounds would start every patch from the same LoRA A
    assert set(record["modes"]["stack"][2]["overlap_with_earlier"]["round-1 vs round-2"]) == {
        "mso_input", "mso_output", "random_mso_input", "random_mso_output"}
    cont = json.loads((out / "continue" / "round-2" / "patch" / "orthopatch.json").read_text())
    assert cont["config"]["init_patch"].endswith("continue/round-1/patch")


def test_bad_redteam_settings_are_clear_errors(tiny_model, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown mode"):
        run_redteam(RedteamConfig(model=str(tiny_model), output=str(tmp_path / "a"), modes=["magic"]))
    with pytest.raises(UserError, match="rounds must be"):
        run_redteam(RedteamConfig(model=str(tiny_model), output=str(tmp_path / "b"), rounds=9))
    assert main(["redteam", "--model", str(tiny_model), "--output", str(tmp_path / "c"), "--set",
                 "schedule=[[direct], [no_such_family]]", "--rounds", "2"]) == 2
    assert "unknown attack family" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")
