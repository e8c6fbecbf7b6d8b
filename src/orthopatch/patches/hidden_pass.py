"""The base's hidden states at chosen layers, from a forward pass that may stop right after the deepest of them."""

from __future__ import annotations

from contextlib import contextmanager, suppress

import torch

from orthopatch.errors import UserError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (``model.layers`` in Llama/Qwen, ``transformer.h`` in GPT-2, ...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the decoder layers of {type(model).__name__} (looked for a list of {n} layers)")


class Stop(Exception):
    """Raised by a hook right after the deepest layer a probe needs: the rest of the forward pass is not run."""


@contextmanager
def captured_layers(model, layers: list[int], *, stop: bool = False):
    """Within the block, every forward pass of ``model`` records the hidden states (batch, tokens, hidden) after
    each of ``layers`` into the yielded dict; with ``stop`` the pass ends right after the deepest of them."""
    stack = decoder_layers(model)
    if not layers or min(layers) < 1 or max(layers) > len(stack):
        raise UserError(f"gate layers must lie in 1..{len(stack)}", field="layer")
    captured: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(_module, _inputs, output):
            captured[index] = (output[0] if isinstance(output, tuple) else output).float()
            if stop and index == max(layers):
                raise Stop
        return hook

    handles = [stack[index - 1].register_forward_hook(capture(index)) for index in sorted(set(layers))]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
                   ) -> dict[int, torch.Tensor]:
    """Hidden states (batch, tokens, hidden) after each of ``layers``, from one forward pass that stops after the
    deepest of them (``model`` is the plain transformers model, or a PEFT model with its adapters switched off)."""
    with captured_layers(model, layers, stop=True) as captured, suppress(Stop):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return captured
