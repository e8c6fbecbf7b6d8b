"""Patch management on tiny models: exact stacking (different ranks and scales), bit-for-bit detach, merge, export,
base and hash checks, and the `orthopatch patch` commands."""

import json
import shutil

import pytest
import torch

from orthopatch.cli import main
from orthopatch.errors import UserError
from orthopatch.models.loading import load_model
from orthopatch.patches.manifest import MANIFEST, apply_patch, read_manifest
from orthopatch.patches.stack import (
    attach_patches,
    diff_patches,
    export_patch,
    merge_patches,
    parse_patch_spec,
    stack_adapters,
)
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

PROMPTS = ["Hi there", "What is the capital of France?", "Who wrote Hamlet?"]


def make_patch(model_dir, data, out, r, targets, seed):
    return train_patch(TrainConfig(model=str(model_dir), data=[str(data)], output=str(out), epochs=1, batch_size=4,
                                   lr=2e-2, seed=seed, device="cpu",
                                   lora=LoraSettings(r=r, alpha=2 * r, target_modules=targets)), progress=False)


@pytest.fixture(scope="module")
def patch_pairs(tiny_models, tmp_path_factory):
    """Per architecture: two patches of different ranks and target modules."""
    from tests.conftest import SAFE_TRAIN

    root = tmp_path_factory.mktemp("patch-ops")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in SAFE_TRAIN))
    out = {}
    for arch in ("llama", "gpt2"):
        second_targets = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn"]
        out[arch] = (make_patch(tiny_models[arch], data, root / f"{arch}-a", 2, "all-linear", 0),
                     make_patch(tiny_models[arch], data, root / f"{arch}-b", 4, second_targets, 1))
    return out


def logits(model, tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def by_hand(model_dir, patches):
    """W0 + Σ s·(alpha/r)·B·A written into a plain copy of the base, module by module, from the adapter files."""
    from safetensors.torch import load_file

    model, tokenizer, _ = load_model(str(model_dir), device="cpu")
    modules = dict(model.named_modules())
    for path, scale in patches:
        config = json.loads((path / "adapter_config.json").read_text())
        tensors = load_file(str(path / "adapter_model.safetensors"))
        for key in [k for k in tensors if ".lora_A." in k]:
            name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            A, B = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            delta = scale * config["lora_alpha"] / A.shape[0] * (B @ A)
            weight = modules[name].weight
            with torch.no_grad():
                weight += delta.T if config.get("fan_in_fan_out") else delta
    return model, tokenizer


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_stacking_is_exact_with_different_ranks_and_scales(arch, tiny_models, patch_pairs, tmp_path):
    a, b = patch_pairs[arch]
    specs = [(a, 0.7), (b, -1.3)]
    expected_model, tokenizer = by_hand(tiny_models[arch], specs)
    expected = logits(expected_model, tokenizer)
    base, _, info = load_model(str(tiny_models[arch]), device="cpu")
    live, _ = attach_patches(base, [(str(a), 0.7), (str(b), -1.3)], info.fingerprint)
    assert torch.allclose(logits(live, tokenizer), expected, atol=1e-5)
    stacked = stack_adapters([(str(a), 0.7), (str(b), -1.3)], tmp_path / "stack", base_fingerprint=info.fingerprint)
    config = json.loads((stacked / "adapter_config.json").read_text())
    assert config["r"] == 2 + 4 and config["lora_alpha"] == 6
    one, _ = apply_patch(load_model(str(tiny_models[arch]), device="cpu")[0], stacked, info.fingerprint)
    assert torch.allclose(logits(one, tokenizer), expected, atol=1e-5)
    manifest = read_manifest(stacked)
    assert [s["scale"] for s in manifest["stack"]] == [0.7, -1.3] and manifest["method"] == "stack"


def test_the_stack_is_not_a_single_patch(tiny_models, patch_pairs):
    """The check above can fail: leaving out the second patch changes the logits."""
    a, b = patch_pairs["llama"]
    both, tokenizer = by_hand(tiny_models["llama"], [(a, 1.0), (b, 1.0)])
    only_a, _ = by_hand(tiny_models["llama"], [(a, 1.0)])
    assert not torch.allclose(logits(both, tokenizer), logits(only_a, tokenizer), atol=1e-5)


def test_detach_restores_the_base_bit_for_bit(tiny_model, patch_pairs):
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    reference = logits(base, tokenizer)
    live, _ = attach_patches(base, [(str(p), 1.0) for p in patch_pairs["llama"]], info.fingerprint)
    assert not torch.equal(logits(live, tokenizer), reference)
    restored = live.unload()
    after = restored.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(logits(restored, tokenizer), reference)


def test_merge_unmerge_round_trip_and_merged_directory_loads_in_plain_transformers(tiny_model, patch_pairs,
                                                                                     tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = patch_pairs["llama"]
    base, tokenizer, info = load_model(str(tiny_model), device="cpu")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    live, _ = attach_patches(base, [(str(a), 0.5), (str(b), 1.0)], info.fingerprint)
    patched = logits(live, tokenizer)
    live.merge_adapter()
    assert torch.allclose(logits(live, tokenizer), patched, atol=1e-5)
    live.unmerge_adapter()
    restored = live.unload().state_dict()
    assert max((restored[k] - before[k]).abs().max().item() for k in before) < 1e-6

    merged = merge_patches([(str(a), 0.5), (str(b), 1.0)], tmp_path / "merged", model=str(tiny_model))
    plain = AutoModelForCausalLM.from_pretrained(str(merged), use_safetensors=True)
    assert torch.allclose(logits(plain, tokenizer), patched, atol=1e-4)
    manifest = json.loads((merged / MANIFEST).read_text())
    assert manifest["kind"] == "merged" and len(manifest["stack"]) == 2
    assert not any(p.suffix in (".bin", ".pt") for p in merged.iterdir())


def test_a_patch_for_another_base_is_refused_unless_allowed(tiny_models, patch_pairs, tmp_path):
    from tests.conftest import save_tiny

    other = save_tiny(tmp_path / "other", "llama", seed=7)
    base, _, info = load_model(str(other), device="cpu")
    a, _ = patch_pairs["llama"]
    with pytest.raises(UserError, match="made for base"):
        attach_patches(base, [(str(a), 1.0)], info.fingerprint)
    with pytest.raises(UserError, match="made for base"):
        stack_adapters([(str(a), 1.0)], tmp_path / "s", base_fingerprint=info.fingerprint)
    assert not (tmp_path / "s").exists()
    out = stack_adapters([(str(a), 1.0)], tmp_path / "s", base_fingerprint=info.fingerprint,
                         allow_base_mismatch=True)
    assert read_manifest(out)["base_mismatch_allowed"] is True


def test_tampered_weights_are_refused(patch_pairs, tmp_path):
    a, _ = patch_pairs["llama"]
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    data = bytearray((bad / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 does not match"):
        stack_adapters([(str(bad), 1.0)], tmp_path / "s")
    with pytest.raises(UserError, match="sha256 does not match"):
        export_patch(bad, tmp_path / "e")
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()


def test_export_writes_a_model_card_and_a_verifiable_copy(patch_pairs, tmp_path):
    a, _ = patch_pairs["llama"]
    out = export_patch(a, tmp_path / "shared")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "adapter_model.safetensors" in card
    exported, original = read_manifest(out), read_manifest(a)
    assert exported["files"]["adapter_model.safetensors"] == original["files"]["adapter_model.safetensors"]
    assert exported["files"]["adapter_config.json"] == original["files"]["adapter_config.json"]
    assert exported["exported_from"]["path"] == str(a)
    assert main(["patch", "verify", str(out)]) == 0


def test_diff_is_one_for_the_same_patch_and_lower_for_different_ones(tiny_model, patch_pairs):
    a, b = patch_pairs["llama"]
    same = diff_patches([str(a), str(a)], model=str(tiny_model), labels=["x", "y"])["x vs y"]
    assert same["mso_input"] == pytest.approx(1.0, abs=1e-6)
    different = diff_patches([str(a), str(b)], model=str(tiny_model))
    (row,) = different.values()
    assert row["mso_input"] < 0.99 and row["n_modules"] == 4  # q_proj and v_proj of both layers are shared


def test_patch_spec_parsing():
    assert parse_patch_spec("runs/p") == ("runs/p", 1.0)
    assert parse_patch_spec("runs/p@0.5") == ("runs/p", 0.5)
    assert parse_patch_spec("runs/me@home/p") == ("runs/me@home/p", 1.0)
    assert parse_patch_spec("p@-1") == ("p", -1.0)
    for bad in ("p@abc", "p@nan", "p@inf"):
        with pytest.raises(UserError, match="PATCH@SCALE"):
            parse_patch_spec(bad)


def test_patch_commands(tiny_model, patch_pairs, tmp_path, capsys):
    from tests.conftest import save_tiny

    a, b = patch_pairs["llama"]
    assert main(["patch", "apply", f"{a}@0.5", str(b), "--model", str(tiny_model), "--output",
                 str(tmp_path / "s")]) == 0
    assert main(["patch", "info", str(tmp_path / "s")]) == 0
    assert "stacked:" in capsys.readouterr().out
    assert main(["patch", "verify", str(a), "--model", str(tiny_model)]) == 0
    other = save_tiny(tmp_path / "other", "llama", seed=5)
    capsys.readouterr()
    assert main(["patch", "verify", str(a), "--model", str(other)]) == 2
    assert "made for base" in capsys.readouterr().err
    assert main(["patch", "diff", str(a), str(b), "--model", str(tiny_model)]) == 0
    assert "MSO input" in capsys.readouterr().out
    assert main(["patch", "merge", str(a), "--model", str(other), "--output", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()
