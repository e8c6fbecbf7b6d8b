"""Dose a patch at inference: scale every LoRA layer's update by a factor (1.0 = as trained)."""

from __future__ import annotations

from peft.tuners.lora import LoraLayer


def set_patch_scale(peft_model, scale: float, adapter_name: str | None = None) -> int:
    """Multiply the LoRA scaling of ``adapter_name`` (default: the active one) by ``scale``; return layers changed."""
    name = adapter_name or peft_model.active_adapter
    changed = 0
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.set_scale(name, scale)  # PEFT: scaling = scale * alpha / r
            changed += 1
    return changed
