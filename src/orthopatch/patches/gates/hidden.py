"""Feature kind ``hidden``: the frozen base's hidden states after one or more layers, pooled over the prompt (the
last attended token, the mean over attended tokens, or both), concatenated across layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from orthopatch.errors import UserError
from orthopatch.patches.gates.base import POOLINGS, Feature, GateInputs
from orthopatch.patches.gates.registry import register_feature


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last+mean":
        return torch.cat([pool(hidden, attention_mask, "last"), pool(hidden, attention_mask, "mean")], dim=1)
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)  # the last attended position
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@register_feature
class HiddenStates(Feature):
    kind = "hidden"

    def __init__(self, layers: list[int], pooling: str) -> None:
        self._layers, self.pooling = list(layers), pooling

    @property
    def layers(self) -> list[int]:
        return self._layers

    def extract(self, inputs: GateInputs) -> torch.Tensor:
        attention = inputs.attention
        return torch.cat([pool(inputs.hidden[layer], attention.to(inputs.hidden[layer].device), self.pooling)
                          for layer in self._layers], dim=1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "layers": self._layers, "pooling": self.pooling}

    def describe(self) -> str:
        which = "layer" if len(self._layers) == 1 else "layers"
        return f"hidden states of {which} {', '.join(map(str, self._layers))} ({self.pooling} pooling)"

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path, where: str) -> HiddenStates:
        layers = config.get("layers")
        if not isinstance(layers, list) or not layers or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in layers):
            raise UserError("must list layer indices >= 1", path=path, field=where + "layers")
        if config.get("pooling") not in POOLINGS:
            raise UserError(f"must be one of {', '.join(POOLINGS)}", path=path, field=where + "pooling")
        return cls(layers, config["pooling"])

    @classmethod
    def candidates(cls, argument: str | None, layers: list[int], poolings: list[str]) -> list[Feature]:
        """``hidden``: each candidate layer alone; ``hidden:all``: all candidate layers together."""
        if argument not in (None, "all"):
            raise UserError(f"unknown hidden-state features {argument!r}: give hidden or hidden:all",
                            field="gate.features")
        groups = [layers] if argument == "all" else [[layer] for layer in layers]
        return [cls(group, pooling) for group in groups for pooling in poolings]
