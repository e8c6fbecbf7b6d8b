"""LoRA's dropout with a cheaper random mask.

PEFT applies ``nn.Dropout`` to every LoRA module's input: a Bernoulli draw per element of a (tokens x hidden)
tensor, 210 of them per pass for an all-linear 30-layer model. On a CPU that draw costs as much as the module's
frozen matmul (a fifth of a training step on SmolLM2-135M, torch profiler). Here each element's keep/drop comes from
16 random bits (four per 64-bit draw) and is applied with ``where``: a fifth of the cost; the drop probability is
rounded to a multiple of 1/65536 (0.05 -> 0.0500031). Same distribution otherwise (independent per element, inverted scaling);
other random numbers, so a patch's bits differ from PEFT's dropout.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer


class BitsDropout(torch.nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        # int16 bits are uniform over [-32768, 32767]: drop the lowest round(p * 65536) values
        self.threshold = round(p * 65536) - 32768
        self.scale = 1.0 / (1.0 - round(p * 65536) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x, 0.0).mul_(self.scale)  # 5x faster on a CPU than x * keep (a bool multiply)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_bits_dropout(model) -> int:
    """Swap every LoRA ``nn.Dropout`` of ``model`` for :class:`BitsDropout`; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                    module.lora_dropout[name] = BitsDropout(dropout.p)
                    swapped += 1
    return swapped
