"""The LoRA refusal-SFT recipe on tiny random models: a matrix over architectures and target modules."""

import json

import pytest
import torch
from safetensors.torch import load_file

from orthopatch.config import make
from orthopatch.errors import UserError
from orthopatch.models.loading import load_model
from orthopatch.patches.manifest import MANIFEST, apply_patch, verify_patch
from orthopatch.train.config import LoraSettings, TrainConfig
from orthopatch.train.run import train_patch

TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["up_proj"], "gpt2": ["c_attn"]}
CASES = [(arch, target) for arch in ("llama", "qwen2", "gpt2") for target in ("all-linear", "subset")]


def train_cfg(model_dir, data, output, **kw):
    base = dict(model=str(model_dir), data=[str(data)], output=str(output), epochs=2, batch_size=4, lr=5e-3,
                device="cpu", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    base.update(kw)
    return make(TrainConfig, **base)  # old flat spellings (retain_weight, dpo_beta, ...) still read


@pytest.mark.parametrize(("arch", "target"), CASES)
def test_patch_trains_only_adapters_and_loads_in_plain_peft(tiny_models, refusal_jsonl, tmp_path, arch, target):
    from peft import PeftModel

    model_dir = tiny_models[arch]
    targets = "all-linear" if target == "all-linear" else TARGETS[arch]
    cfg = train_cfg(model_dir, refusal_jsonl, tmp_path / "patch",
                    lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=targets))
    before = {k: v.clone() for k, v in load_file(model_dir / "model.safetensors").items()}
    model, tokenizer, info = load_model(str(model_dir), device="cpu")
    patch = train_patch(cfg, progress=False, model_and_tokenizer=(model, tokenizer, info))

    # The caller's base is left as it was: same weights, no LoRA layers.
    state = model.state_dict()
    assert not any("lora_" in k for k in state)
    for key, value in before.items():
        assert torch.equal(state[key], value), key

    # Only adapter tensors were saved, they moved away from the B=0 init, and they sit where asked.
    adapter = load_file(patch / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    if target == "subset":
        assert all(any(t in k for t in TARGETS[arch]) for k in adapter)

    manifest = json.loads((patch / MANIFEST).read_text())
    assert manifest["base"]["fingerprint"] == info.fingerprint
    assert manifest["config"]["lora"]["r"] == 4 and manifest["seed"] == 0
    assert manifest["data"]["n_examples"] == 12 and len(manifest["data"]["records_sha256"]) == 64
    assert {"torch", "transformers", "peft", "python"} <= set(manifest["libraries"])
    cost = manifest["cost"]
    assert cost["tokens_trained"] > cost["label_tokens"] > 0 and cost["wall_seconds"] > 0
    assert cost["peak_memory_mb"] > 0 and cost["trainable_parameters"] > 0
    log = [json.loads(line) for line in (patch / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == cost["optimizer_steps"] == 6 and log[-1]["loss"] < log[0]["loss"]
    verify_patch(patch, info.fingerprint)

    # Plain PEFT and orthopatch give the same logits.
    x = tokenizer("What is the capital of France?", return_tensors="pt")
    ours, _ = apply_patch(load_model(str(model_dir), device="cpu")[0], patch, info.fingerprint)
    plain = PeftModel.from_pretrained(load_model(str(model_dir), device="cpu")[0], str(patch))
    with torch.no_grad():
        diff = (ours(**x).logits - plain(**x).logits).abs().max().item()
        base_logits = load_model(str(model_dir), device="cpu")[0](**x).logits
        assert (ours(**x).logits - base_logits).abs().max().item() > 1e-4  # the patch does something
    assert diff < 1e-4


def test_same_seed_same_patch_bitwise(tiny_model, refusal_jsonl, tmp_path):
    a = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "a"), progress=False)
    b = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "b"), progress=False)
    c = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "c", seed=1), progress=False)
    files = {p: json.loads((p / MANIFEST).read_text())["files"]["adapter_model.safetensors"] for p in (a, b, c)}
    assert files[a] == files[b] != files[c]


def test_existing_output_is_never_overwritten_unasked(tiny_model, refusal_jsonl, tmp_path):
    out = tmp_path / "patch"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        train_patch(train_cfg(tiny_model, refusal_jsonl, out), progress=False)
    assert (out / "mine.txt").read_text() == "keep me"
    train_patch(train_cfg(tiny_model, refusal_jsonl, out, epochs=1), progress=False, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / MANIFEST).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_unknown_method_is_a_user_error(tiny_model, refusal_jsonl, tmp_path):
    with pytest.raises(UserError, match="unknown value 'magic'"):
        train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "p", method="magic"), progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("method", ["lora-sft", "full-sft"])
def test_retain_term_keeps_benign_behaviour_closer_to_the_base(tiny_model, refusal_jsonl, tmp_path, method):
    from orthopatch.data.registry import load_dataset
    from orthopatch.data.splits import get_split
    from orthopatch.evaluate.metrics import kl_to_base
    from orthopatch.models.generation import chat_prompt_ids, left_pad

    prompts = [r.prompt for r in get_split(load_dataset("chatterbot_prompts"), "validation", limit=16)]
    kls = {}
    for weight in (0.0, 20.0):
        out = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / f"p{weight}", method=method,
                                    lr=5e-3 if method == "lora-sft" else 1e-3, retain=["chatterbot_prompts"],
                                    retain_weight=weight, retain_batch_size=4), progress=False)
        manifest = json.loads((out / MANIFEST).read_text())
        base, tokenizer, info = load_model(str(tiny_model), device="cpu")
        if method == "lora-sft":
            model, _ = apply_patch(base, out, info.fingerprint)
            kls[weight] = kl_to_base(model, tokenizer, prompts)["value"]
        else:
            tuned = load_model(str(out), device="cpu")[0]
            ids = chat_prompt_ids(tokenizer, prompts)
            x, mask = left_pad(ids, tokenizer.pad_token_id, "cpu")
            with torch.no_grad():
                p = torch.log_softmax(base(input_ids=x, attention_mask=mask).logits, -1)
                q = torch.log_softmax(tuned(input_ids=x, attention_mask=mask).logits, -1)
            kls[weight] = float((p.exp() * (p - q)).sum(-1)[mask.bool()].mean())
        if weight:
            assert manifest["data"]["retain"]["weight"] == weight
            log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            assert all("retain_kl" in row and "sft_loss" in row for row in log)
    # Validation prompts, never seen in training: the anchor generalises beyond its own batches.
    assert kls[20.0] < kls[0.0]


@pytest.fixture
def base_answers(monkeypatch):
    """DPO's rejected side is the base's own greedy answer; a tiny random model only emits newlines (which count
    as no answer), so these tests give it a fixed compliant-looking answer and count the calls."""
    import orthopatch.models.generation as generation

    calls = []

    def fake(model, tokenizer, prompts, **kwargs):
        calls.append(len(prompts))
        return [f"Sure, here is how: step {i}, then step {i + 1}." for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", fake)
    return calls


def test_dpo_without_any_base_answer_is_a_clear_error(tiny_model, refusal_jsonl, tmp_path):
    with pytest.raises(UserError, match="no preference pairs"):
        train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "p", method="lora-dpo", dpo_rejected_tokens=4),
                    progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("method", ["lora-dpo", "full-dpo"])
def test_dpo_changes_the_right_weights_and_its_loss_falls(tiny_model, refusal_jsonl, tmp_path, method,
                                                          base_answers):
    model, tokenizer, info = load_model(str(tiny_model), device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "p", method=method, epochs=4,
                                lr=5e-3 if method == "lora-dpo" else 1e-3, dpo_beta=0.5, dpo_rejected_tokens=8),
                      progress=False, model_and_tokenizer=(model, tokenizer, info))
    state = model.state_dict()
    assert set(state) == set(before) and all(torch.equal(state[k], before[k]) for k in before)  # caller's base
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == method and manifest["data"]["dpo"]["pairs"] > 0
    assert (out / "dpo_rejected.jsonl").is_file() and "dpo_rejected.jsonl" not in manifest["files"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # Policy and reference are the same model at the first step, so the sigmoid loss starts at log 2 exactly.
    assert abs(log[0]["loss"] - 0.693147) < 1e-4 and log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["reward_margin"] > 0
    if method == "lora-dpo":
        adapter = load_file(out / "adapter_model.safetensors")
        assert all("lora_" in k for k in adapter) and any(v.abs().sum() > 0 for k, v in adapter.items()
                                                          if "lora_B" in k)
        assert manifest["kind"] == "lora"
    else:
        tuned = load_file(out / "model.safetensors")
        assert manifest["kind"] == "full" and not any("lora_" in k for k in tuned)
        changed = [k for k in tuned if not torch.equal(tuned[k], before[k])]
        assert changed and any("layers" in k for k in changed)


def test_dpo_reuses_its_cached_rejected_answers(tiny_model, refusal_jsonl, tmp_path, monkeypatch, base_answers):
    cfg = train_cfg(tiny_model, refusal_jsonl, tmp_path / "p", method="lora-dpo", epochs=1, dpo_rejected_tokens=4)
    monkeypatch.setenv("ORTHOPATCH_FAULT_AFTER_STEPS", "1:SIGINT")  # Python turns SIGINT into KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_patch(cfg, progress=False)
    monkeypatch.delenv("ORTHOPATCH_FAULT_AFTER_STEPS")
    assert base_answers == [12]
    out = train_patch(cfg, progress=False)
    assert base_answers == [12] and (out / "dpo_rejected.jsonl").is_file()


@pytest.mark.parametrize("method", ["lora-sft", "full-sft"])
def test_mixing_adds_general_data_at_the_stated_share(tiny_model, refusal_jsonl, tmp_path, method, base_answers):
    out = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "p", method=method, epochs=1,
                                mix_general=0.5, general_max_new_tokens=8), progress=False)
    mix = json.loads((out / MANIFEST).read_text())["data"]["mix"]
    assert mix["n_safety"] == 12 and mix["wanted"] == 12 and mix["n_general"] == 12
    assert mix["sources"][0]["name"] == "chatterbot_prompts" and len(mix["answers_sha256"]) == 64
    assert base_answers == [12]  # the base answered the general prompts once
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6  # 24 examples, batch 4
    user = tmp_path / "general.jsonl"
    user.write_text("".join(json.dumps({"prompt": f"Name a colour ({i})", "response": "Blue."}) + "\n"
                            for i in range(30)))
    out = train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "q", method=method, epochs=1,
                                mix_general=0.25, general_data=[str(user)]), progress=False)
    mix = json.loads((out / MANIFEST).read_text())["data"]["mix"]
    assert mix["wanted"] == 4 and mix["n_general"] == 4 and mix["answers_sha256"] is None
    with pytest.raises(UserError, match="mix_general"):
        train_patch(train_cfg(tiny_model, refusal_jsonl, tmp_path / "r", method="lora-dpo", mix_general=0.5),
                    progress=False)
