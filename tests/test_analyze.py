"""orthopatch analyze end to end on tiny models: LoRA deltas equal merged deltas; outputs and figures written."""

import json

import pytest
import torch

from orthopatch.analysis.deltas import WeightReader, full_deltas, lora_deltas
from orthopatch.cli import main
from orthopatch.models.loading import load_model
from orthopatch.recipes.analyze import AnalyzeConfig, analyze
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"request {i}", "response": "I can't help with that."}) + "\n"
                            for i in range(8)))
    out = {}
    for arch in ("llama", "gpt2"):
        common = dict(model=str(tiny_models[arch]), data=[str(data)], epochs=1, batch_size=4, device="cpu")
        out[arch, "lora"] = train_patch(TrainConfig(output=str(root / f"{arch}-lora"), lr=5e-2,
                                                    lora=LoraSettings(r=2, alpha=4), **common), progress=False)
        out[arch, "full"] = train_patch(TrainConfig(output=str(root / f"{arch}-full"), method="full-sft", lr=1e-3,
                                                    **common), progress=False)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_deltas_equal_the_merged_weight_difference(tiny_models, runs, tmp_path, arch):
    from peft import PeftModel

    model, tokenizer, _ = load_model(str(tiny_models[arch]), device="cpu")
    merged = PeftModel.from_pretrained(model, str(runs[arch, "lora"])).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged", safe_serialization=True)
    base = WeightReader(tiny_models[arch])
    factored = {d.name: d.delta.dense() for d in lora_deltas(runs[arch, "lora"], base)}
    dense = {d.name: d.delta.dense() for d in full_deltas(tmp_path / "merged", base)}
    assert factored and set(factored) <= set(dense)
    for name, value in factored.items():
        torch.testing.assert_close(value, dense[name], atol=1e-6, rtol=1e-4)
    untouched = set(dense) - set(factored)
    assert all(dense[n].abs().max() < 1e-6 for n in untouched)


def test_full_sft_changes_base_weights_and_lora_sft_does_not(tiny_models, runs):
    base = WeightReader(tiny_models["llama"])
    full = list(full_deltas(runs["llama", "full"], base))
    assert full and all(d.delta.S.max() > 0 for d in full)
    manifest = json.loads((runs["llama", "full"] / "orthopatch.json").read_text())
    assert manifest["kind"] == "full" and manifest["cost"]["trainable_parameters"] > 10_000
    assert "model.safetensors" in manifest["files"]


def test_analyze_writes_results_and_figures(tiny_models, runs, tmp_path, capsys):
    cfg = AnalyzeConfig(targets=[str(runs["llama", "lora"]), str(runs["llama", "full"])], labels=["lora", "full"],
                        base=str(tiny_models["llama"]), output=str(tmp_path / "geo"), ks=[4, 16], rank=2,
                        n_prompts=3, baseline_samples=4)
    out, results = analyze(cfg, echo=lambda *_: None)
    for name in ("geometry.json", "geometry.csv", "geometry_orthogonality.png", "geometry_orthogonality.csv",
                 "geometry_energy.png", "geometry_magnitude.png", "geometry_interference.png",
                 "geometry_hidden_shift.png"):
        assert (out / name).is_file(), name
    lora, full = results["targets"]["lora"], results["targets"]["full"]
    assert lora["kind"] == "lora" and full["kind"] == "full"
    row = lora["modules"][0]
    assert row["r"] == 2 and row["significant_singular_values"] <= 2 and set(row["k"]) == {"r", "4", "16"}
    assert 0 <= row["k"]["r"]["paper_similarity"] <= 1 and "paper_similarity" in row["k"]["r"]["random"]
    assert len(lora["hidden_shift"]["benign"]) == 2 and lora["hidden_shift"]["jailbreak"][0]["last"] > 0
    assert all(r["interference"] >= 0 and r["update_response"] > 0 for r in lora["modules"])
    assert full["summary"]["all"]["significant_singular_values"] > 2
    overlap = results["overlap"]["lora vs full"]
    assert overlap["n_modules"] == len(lora["modules"]) and 0 <= overlap["mso_input"] <= 1
    # The console entry point prints a table with both targets.
    assert main(["analyze", str(runs["llama", "lora"]), "--base", str(tiny_models["llama"]), "--k", "4",
                 "--rank", "2", "--n-prompts", "2", "--output", str(tmp_path / "cli")]) == 0
    assert "paper_similarity" in capsys.readouterr().out
