"""Scale selection reads validation splits only, and picks by the stated rule."""

import json

import pytest

from orthopatch.data import splits
from orthopatch.recipes.dose import VALIDATION, select_scale
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch


def test_selection_never_reads_test_data(tiny_model, refusal_jsonl, tmp_path, monkeypatch):
    patch = train_patch(TrainConfig(model=str(tiny_model), data=[str(refusal_jsonl)], output=str(tmp_path / "p"),
                                    epochs=1, device="cpu", lora=LoraSettings(r=2, alpha=4)), progress=False)
    requested = []
    original = splits.get_split

    def spy(dataset, split, *args, **kwargs):
        requested.append((dataset.name, split))
        return original(dataset, split, *args, **kwargs)

    monkeypatch.setattr(splits, "get_split", spy)  # every evaluation set goes through named_split -> get_split
    cfg = VALIDATION.__class__(**{**VALIDATION.__dict__, "n_harmful": 3, "n_benign": 2, "max_new_tokens": 3,
                                  "device": "cpu"})
    record = select_scale(patch, [0.5, 1.0], model=str(tiny_model), cfg=cfg, output=str(tmp_path / "dose"))
    assert requested and {split for _, split in requested} == {"validation"}
    assert "harmbench" not in {name for name, _ in requested}
    saved = json.loads((tmp_path / "dose" / "dose.json").read_text())
    assert saved["chosen_scale"] == record["chosen_scale"] and len(saved["scales"]) == 2
    feasible = [r for r in record["scales"] if r["feasible"]]
    if feasible:
        best = max(feasible, key=lambda r: (r["harmful_refusal"], -r["scale"]))
        assert record["chosen_scale"] == best["scale"]
    with pytest.raises(ValueError, match="validation"):
        select_scale(patch, [1.0], model=str(tiny_model), cfg=VALIDATION.__class__(split="test"))
