"""Device and dtype flow from a recipe's config into every model it loads: nothing hard-codes the CPU.

The machine that runs the tests has only a CPU, so the recipe is given the device string ``cpu:0`` (a CPU, spelled
differently from anything a hard-coded default would say): every load must receive exactly that string, and every
model must land on the CPU."""

import sys

import torch

from orthopatch.models import loading
from orthopatch.recipes.sweep import SweepConfig, run_sweep


def test_a_recipe_loads_every_model_on_its_configured_device(tiny_model, refusal_jsonl, tmp_path, monkeypatch):
    original = loading.load_model
    seen: list[tuple[str | None, str, str]] = []

    def spy(spec=None, *, dtype="float32", device="auto", trust_remote_code=False):
        model, tokenizer, info = original(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        seen.append((device, dtype, next(model.parameters()).device.type))
        return model, tokenizer, info

    for module in list(sys.modules.values()):  # every module that imported the name
        if getattr(module, "load_model", None) is original and module.__name__.startswith("orthopatch"):
            monkeypatch.setattr(module, "load_model", spy)
    cfg = SweepConfig(model=str(tiny_model), output=str(tmp_path / "sweep"), preset=None,
                      methods=["lora-sft", "full-sft"], ranks=[2], lrs=[5e-3], epochs=[1], data=[str(refusal_jsonl)],
                      max_examples=4, n_harmful=2, attacks=[], n_benign=2, n_trivia=2, n_perplexity=2,
                      max_new_tokens=2, device="cpu:0", dtype="float32")
    run_sweep(cfg, echo=lambda *_: None)
    assert len(seen) == 2  # the base, and the fully fine-tuned cell's model
    assert all(device == "cpu:0" and dtype == "float32" and landed == "cpu" for device, dtype, landed in seen)
    assert torch.device("cpu:0").type == "cpu"
