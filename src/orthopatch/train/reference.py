"""The reference the objectives compare with: the base model's outputs while the patch trains (DPO's reference
policy, the retain terms' teacher). In one place, so that every objective means the same base."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch


class Reference:
    """The LoRA adapter switched off (no copy needed), or, when every weight trains, a frozen copy of the model made
    before training starts."""

    def __init__(self, frozen: torch.nn.Module | None = None) -> None:
        self.frozen = frozen
        self.accelerator = None  # bound by the loop: the adapter is switched off on the unwrapped model

    @classmethod
    def for_training(cls, trainable: torch.nn.Module, is_lora: bool) -> Reference:
        return cls(None if is_lora else copy.deepcopy(trainable).requires_grad_(False).eval())

    def run(self, model: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        """``fn(module)`` with the base's weights, without gradients (``model`` is the one being trained)."""
        with torch.no_grad():
            if self.frozen is not None:
                return fn(self.frozen)
            unwrapped = self.accelerator.unwrap_model(model) if self.accelerator is not None else model
            with unwrapped.disable_adapter():
                return fn(model)
