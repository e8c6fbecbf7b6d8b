"""Per-row routing of one adapter on a PEFT model: each row of a batch gets the adapter's update or not.

This is what lets gated and ungated prompts, and prompts for different patches, share one batch: hooks on the
adapter's ``lora_B`` modules multiply each row's update by its 0/1 entry, and while no row of the batch wants the
adapter it is taken out of its layers' active list, so its update is not computed at all (a masked update adds
exactly zero: the numbers are the same, the time is not). A row that is off computes exactly the numbers it would
compute without the adapter.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from orthopatch.errors import UserError


class RowMask:
    """Which rows of the current batch get ``adapter_name``'s update (``set`` before each new batch)."""

    def __init__(self, peft_model, adapter_name: str) -> None:
        self.adapter_name = adapter_name
        self.mask: torch.Tensor | None = None
        self._parked, self._active = False, []
        self.layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_B]
        if not self.layers:
            raise UserError(f"the adapter {adapter_name!r} has no LoRA layers on this model")
        self.handles = [layer.lora_B[adapter_name].register_forward_hook(self._apply) for layer in self.layers]
        self.device = self.layers[0].lora_B[adapter_name].weight.device

    def set(self, mask: torch.Tensor) -> None:
        """``mask``: one bool per row of the batch that follows."""
        self.mask = mask.to(self.device, torch.bool)
        self._park(not bool(self.mask.any()))

    def _park(self, park: bool) -> None:
        """PEFT's layers read ``active_adapters`` from ``_active_adapter`` on every forward. Other masks park and
        unpark their own adapters on the same layers, so each touches only its own name, and an unparked adapter
        goes back to its place in the order the adapters were loaded (the order stacked updates are summed in)."""
        if park == self._parked:
            return
        if park:
            self._active = [self.adapter_name in layer.active_adapters for layer in self.layers]
            for layer in self.layers:
                layer._active_adapter = [a for a in layer.active_adapters if a != self.adapter_name]
        else:
            for layer, was_active in zip(self.layers, self._active, strict=True):
                current = list(layer.active_adapters)
                wanted = set(current) | ({self.adapter_name} if was_active else set())
                layer._active_adapter = [a for a in layer.lora_A if a in wanted] + [
                    a for a in current if a not in layer.lora_A]
        self._parked = park

    def _apply(self, _module, _inputs, output: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.mask.shape[0] != output.shape[0]:
            raise RuntimeError(f"adapter {self.adapter_name!r}: the update's batch does not match its row mask")
        return output * self.mask.to(output.dtype).view(-1, *([1] * (output.dim() - 1)))

    def remove(self) -> None:
        self._park(False)
        for handle in self.handles:
            handle.remove()
        self.handles = []
