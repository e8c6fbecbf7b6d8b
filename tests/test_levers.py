"""Levers for a patch that keeps benign behaviour: orthogonality by construction, template-augmented
safety data. Checked on tiny models / registered data by their effect, not by timing or by text."""

import pytest
import torch
from safetensors.torch import load_file

from orthopatch.config import make
from orthopatch.data.assemble import augment_with_templates, training_records
from orthopatch.data.registry import load_dataset
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch


def top_right(weight: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.svd(weight.double(), full_matrices=False).Vh[:k].T


def input_energy(patch, model_dir, k: int) -> float:
    """Share of ‖ΔW‖² inside W0's top-k right singular subspace, over all modules."""
    base = load_file(model_dir / "model.safetensors")
    adapter = load_file(patch / "adapter_model.safetensors")
    inside = total = 0.0
    for key in [k_ for k_ in adapter if "lora_A" in k_]:
        name = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
        delta = adapter[key.replace("lora_A", "lora_B")].double() @ adapter[key].double()
        V = top_right(base[name], k)
        inside += float((delta @ V).square().sum())
        total += float(delta.square().sum())
    return inside / total


def cfg(model_dir, data, out, **kw):
    # old flat spellings (ortho_k, ortho_weight, ...) are still read, like a YAML file of an earlier version
    return make(TrainConfig, model=str(model_dir), data=[str(data)], output=str(out), epochs=2, batch_size=4,
                lr=1e-2, device="cpu", lora=LoraSettings(r=4, alpha=8, dropout=0.0,
                                                        target_modules=["q_proj", "v_proj", "up_proj"]), **kw)


def test_projection_keeps_the_update_out_of_w0s_top_k_input_subspace(tiny_model, refusal_jsonl, tmp_path):
    plain = train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "plain"), progress=False)
    projected = train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "proj", ortho_project=True, ortho_k=8),
                            progress=False)
    assert input_energy(plain, tiny_model, 8) > 0.05  # an unconstrained update does use those directions
    assert input_energy(projected, tiny_model, 8) < 1e-10


def test_penalty_lowers_the_energy_in_w0s_top_k_subspace(tiny_model, refusal_jsonl, tmp_path):
    plain = train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "plain"), progress=False)
    penalised = train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "pen", ortho_weight=50.0, ortho_k=8),
                            progress=False)
    assert input_energy(penalised, tiny_model, 8) < 0.8 * input_energy(plain, tiny_model, 8)
    import json

    log = [json.loads(line) for line in (penalised / "train_log.jsonl").read_text().splitlines()]
    assert "ortho_energy" in log[-1]
    with pytest.raises(UserError, match="lora"):
        train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "full", method="full-sft", ortho_weight=1.0),
                    progress=False)


def test_template_augmentation_uses_train_split_templates_only():
    records, _ = training_records(["advbench"], seed=0, max_examples=80)
    out, info = augment_with_templates(records, 0.5, seed=0)
    train_ids = {t.id for t in get_split(load_dataset("pyrit_jailbreak_templates"), "train")}
    # (assertions on counts and booleans only: these prompts are harmful and must not appear in a failure message)
    wrapped = [r for r in out if "template" in r.meta]
    n_wrapped, n_out, n_records = len(wrapped), len(out), len(records)
    assert n_out == n_records and info["n_wrapped"] == n_wrapped and n_wrapped >= 8, n_wrapped
    all_train = all(r.meta["template"] in train_ids for r in wrapped)
    originals = {r.id: r for r in records}
    keeps_goal = all(originals[r.id.split("|", 1)[0]].prompt in r.prompt for r in wrapped)
    keeps_target = all(originals[r.id.split("|", 1)[0]].response == r.response for r in wrapped)
    longest = max(len(r.prompt) for r in wrapped)
    assert all_train and keeps_goal and keeps_target and longest <= 1500
    again, _ = augment_with_templates(records, 0.5, seed=0)
    same_ids = [r.id for r in again] == [r.id for r in out]
    assert same_ids  # seeded
    with pytest.raises(UserError, match="augment_templates"):
        augment_with_templates(records, 1.5, seed=0)


def test_a_baked_scale_multiplies_only_the_update(tiny_model, refusal_jsonl, tmp_path):
    full = load_file(train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "s1")) / "adapter_model.safetensors")
    half = load_file(train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "s05", scale=0.5))
                     / "adapter_model.safetensors")
    for key in full:
        expected = full[key] * (0.5 if "lora_B" in key else 1.0)  # ΔW = s·B·A: only B carries the dose
        assert torch.allclose(half[key], expected, atol=1e-6), key
    with pytest.raises(UserError, match="scale"):
        train_patch(cfg(tiny_model, refusal_jsonl, tmp_path / "bad", scale=0.5, method="full-sft"))
