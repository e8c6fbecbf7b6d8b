"""The training components reproduce, bit for bit, the patches the single training function made before them.

The hashes were first recorded with the code of commit 2b9d087 (before train/ was split into loop, objectives,
adapters, reference and data) on the tiny llama model below, 12 placeholder refusal examples, CPU, torch 2.13.0, and
the split reproduced them all. A later release of the libraries changes the bits (the tiny model's initialisation
and the trained tokenizer come from transformers and tokenizers): on 2026-12-01 a fresh setup (transformers 5.24.0,
tokenizers 0.23.3) gave other hashes for every case, the code of that session's start (fb25e97) included, so they
were re-recorded with the code of that day, which trains the same as fb25e97. On 2026-12-02 (issue 25) the SFT
batches became packed rows and every objective's head is computed at labelled positions only: the same loss to
float tolerance (tests/test_packing.py) but other bits, so every case but lora-dpo (whose bits did not move) was
re-recorded once more, on purpose, with the same library versions. The pins therefore hold for the
library versions in RECORDED_WITH; with others the comparison is skipped saying so, and
``test_training_is_bitwise_reproducible`` (two runs, one hash) still runs. The base's
answers that DPO and mixing need come from a fixed stand-in generator (a random tiny model answers nothing).
Two cases are not here because their data changed on purpose: retain on chatterbot_prompts and mixing with
chatterbot_prompts now drop the 24 training prompts that are also held-out prompts of another set (decontamination);
with decontamination switched off they reproduce the old hashes too (checked when the split was made).
"""

import importlib.metadata
import json

import pytest
import torch

from orthopatch.config import make
from orthopatch.models import generation
from orthopatch.train.config import TrainConfig
from orthopatch.train.run import train_patch
from tests.conftest import save_tiny

RECORDED_WITH = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "tokenizers": "0.23.3", "peft": "0.21.2"}
BEFORE = {
    "lora-sft": ({}, "93380ea18bf2646b270d56a24bfe8de062b2334a43407acaf1a9d867d2f56960"),
    "full-sft": ({"method": "full-sft", "lr": 1e-3}, "094128dc51934ca8cc1f1b0c3b475f933064f24a404aa08a3503817622d1d9ce"),
    "lora-dpo": ({"method": "lora-dpo", "dpo_rejected_tokens": 8},
                 "23cbd4f5fd1e924759b57932b1514a0c9833b9792c9a193c904d3d6b0e59c1e7"),
    "full-dpo": ({"method": "full-dpo", "lr": 1e-3, "dpo_rejected_tokens": 8},
                 "8201ccf96358fee2d2b82d3045f104394a59692e4b30b84d1dbcee26bfa2713e"),
    "retain": ({"retain": ["trivia"], "retain_weight": 5.0, "retain_batch_size": 4},
               "29b13ac738986b0138b25c3b398351d44b2f056fe34554172d8e827477aad714"),
    "ortho-penalty": ({"ortho_weight": 10.0, "ortho_k": 4},
                      "344281e406e734b1baba059b70e93a9e0f8055e220c62b36b150cbaab574b7ff"),
    "ortho-project": ({"ortho_project": True, "ortho_k": 4},
                      "ecf569c6d8da3241b96e557435a83ceaf0841237b70a6e3c264d8a9c13975973"),
    "scale": ({"scale": 0.5}, "4f5118ae6c8862130a7666e100f13713665d2345796f8c48ee55e70f04f0581b"),
}


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) if name != "torch" else torch.__version__
            for name in RECORDED_WITH}


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("hash-model") / "llama", "llama")


def train(case: str, model, data, output):
    overrides, _ = BEFORE[case]
    # the old flat spellings (dpo_rejected_tokens, retain_weight, ortho_k, ...) as the recording used them
    settings = {"model": str(model), "data": [str(data)], "output": str(output), "epochs": 2, "batch_size": 4,
                "lr": 5e-3, "device": "cpu", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **overrides}
    out = train_patch(make(TrainConfig, **settings), progress=False)
    files = json.loads((out / "orthopatch.json").read_text())["files"]
    return files.get("adapter_model.safetensors") or files["model.safetensors"]


@pytest.fixture
def stand_in_generation(monkeypatch):
    def stand_in(model, tokenizer, prompts, **kwargs):
        return [f"Sure, here is how: step {i}, then step {i + 1}." for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", stand_in)


@pytest.mark.parametrize("case", list(BEFORE))
def test_same_seed_data_and_config_give_the_patch_made_before_the_split(case, reference_model, refusal_jsonl,
                                                                        tmp_path, stand_in_generation):
    if library_versions() != RECORDED_WITH:
        pytest.skip(f"the hashes were recorded with {RECORDED_WITH}; this environment has {library_versions()}")
    assert train(case, reference_model, refusal_jsonl, tmp_path / case) == BEFORE[case][1]


@pytest.mark.parametrize("case", ["lora-sft", "lora-dpo"])
def test_training_is_bitwise_reproducible(case, reference_model, refusal_jsonl, tmp_path, stand_in_generation):
    assert train(case, reference_model, refusal_jsonl, tmp_path / "a") == \
        train(case, reference_model, refusal_jsonl, tmp_path / "b")
