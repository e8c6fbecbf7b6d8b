"""What trains: LoRA adapters on a frozen base (a patch), or every weight of a copy of the base (the paper's
full-parameter baseline); building it, baking a chosen dose into a patch, and saving it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from orthopatch.patches.manifest import verify_patch
from orthopatch.train.config import TrainConfig
from orthopatch.train.dropout import use_bits_dropout


def linear_module_names(model) -> list[str]:
    """The distinct leaf names of the model's linear layers, output head excluded (what PEFT's "all-linear" means)."""
    output = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear | Conv1D) and module is not output})


def lora_config(cfg: TrainConfig, model=None) -> LoraConfig:
    targets = cfg.lora.target_modules
    if cfg.lora.layers is not None and isinstance(targets, str) and model is not None:
        targets = linear_module_names(model)  # PEFT takes a layer subset only with a list of module names
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets,
                      layers_to_transform=cfg.lora.layers, task_type="CAUSAL_LM")


def trainable_model(cfg: TrainConfig, model, base_fingerprint: str, shared: bool):
    """LoRA layers on ``model`` (or a verified patch to keep training), or, for full-parameter methods, the model
    itself with every weight trainable (a copy when ``shared``: the caller keeps using its base)."""
    if cfg.is_lora:
        if cfg.init_patch:
            verify_patch(cfg.init_patch, base_fingerprint)
            peft_model = PeftModel.from_pretrained(model, cfg.init_patch, is_trainable=True)
        else:
            peft_model = get_peft_model(model, lora_config(cfg, model))
        use_bits_dropout(peft_model)
        return peft_model
    trainable = copy.deepcopy(model) if shared else model
    return trainable.requires_grad_(True)


@torch.no_grad()
def bake_scale(model, scale: float) -> None:
    """Multiply every LoRA update by ``scale`` for good: ΔW = s·B·A is linear in B."""
    for module in model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_B:
            module.lora_B["default"].weight.mul_(scale)


def save_weights(model, tokenizer, directory: Path, is_lora: bool) -> None:
    """A PEFT adapter directory, or (full-parameter) a standalone model directory loadable like any HF model."""
    model.save_pretrained(str(directory), safe_serialization=True)
    if not is_lora:
        tokenizer.save_pretrained(str(directory))
