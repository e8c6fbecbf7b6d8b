"""The training components reproduce, bit for bit, the patches the single training function made before them.

The hashes were recorded with the code of commit 2b9d087 (before train/ was split into loop, objectives, adapters,
reference and data) on the tiny llama model below, 12 placeholder refusal examples, CPU, torch 2.13.0. The base's
answers that DPO and mixing need come from a fixed stand-in generator (a random tiny model answers nothing).
Two cases are not here because their data changed on purpose: retain on chatterbot_prompts and mixing with
chatterbot_prompts now drop the 24 training prompts that are also held-out prompts of another set (decontamination);
with decontamination switched off they reproduce the old hashes too (checked when the split was made).
"""

import json

import pytest

from orthopatch.config import make
from orthopatch.models import generation
from orthopatch.train.config import TrainConfig
from orthopatch.train.run import train_patch
from tests.conftest import save_tiny

BEFORE = {
    "lora-sft": ({}, "d83993deddde2f00fc549f0cc47de9d76a9d1752c8d13a9aa03cfe91d6adafa0"),
    "full-sft": ({"method": "full-sft", "lr": 1e-3}, "c4e5443a84bcc04a0d2e2c8fd3fdd189c0443f0b33cee8dbb624ef07d457868e"),
    "lora-dpo": ({"method": "lora-dpo", "dpo_rejected_tokens": 8},
                 "69d282add771cc00bca37c00298fd12570a349bcb26e9a06be053bd7b42eac0c"),
    "full-dpo": ({"method": "full-dpo", "lr": 1e-3, "dpo_rejected_tokens": 8},
                 "c562cd3d8adaa99ea9c32850b29b2caf6e6fa4ef74ad1839715829f8864cae85"),
    "retain": ({"retain": ["trivia"], "retain_weight": 5.0, "retain_batch_size": 4},
               "f9d4c82ebb557edc1cf83a18296e5f57d70e10a60d47edb51db2d261639131c6"),
    "ortho-penalty": ({"ortho_weight": 10.0, "ortho_k": 4},
                      "fa0eda36b04bd4aeca1eadeb7d7e8e0ce00127ac00151c34ebe5c93eaafbbf58"),
    "ortho-project": ({"ortho_project": True, "ortho_k": 4},
                      "339f2adb9c3f28a1441642776f0d01e3d8ae569278e24a6830bf37ffa865033a"),
    "scale": ({"scale": 0.5}, "5463951dc82510ed40084e01dad4e9ed901c7884a6f708e69d7597433727d85f"),
}


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("hash-model") / "llama", "llama")


@pytest.mark.parametrize("case", list(BEFORE))
def test_same_seed_data_and_config_give_the_patch_made_before_the_split(case, reference_model, refusal_jsonl,
                                                                        tmp_path, monkeypatch):
    def stand_in(model, tokenizer, prompts, **kwargs):
        return [f"Sure, here is how: step {i}, then step {i + 1}." for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", stand_in)
    overrides, expected = BEFORE[case]
    # the old flat spellings (dpo_rejected_tokens, retain_weight, ortho_k, ...) as the recording used them
    settings = {"model": str(reference_model), "data": [str(refusal_jsonl)], "output": str(tmp_path / case),
                "epochs": 2, "batch_size": 4, "lr": 5e-3, "device": "cpu", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                **overrides}
    cfg = make(TrainConfig, **settings)
    out = train_patch(cfg, progress=False)
    files = json.loads((out / "orthopatch.json").read_text())["files"]
    weights = files.get("adapter_model.safetensors") or files["model.safetensors"]
    assert weights == expected
