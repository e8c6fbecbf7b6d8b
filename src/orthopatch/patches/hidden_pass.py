"""The base's hidden states at chosen layers, from a forward pass that may stop right after the deepest of them."""

from __future__ import annotations

from contextlib import contextmanager, suppress

import torch
from transformers import DynamicCache

from orthopatch.errors import UserError
from orthopatch.models.generation import (
    MIN_SHARED_PREFIX,
    cache_argument,
    common_prefix,
    forward_accepts,
    left_pad,
)


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
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
              **positions_of(model, attention_mask.long().cumsum(-1) - 1))
    return captured


def positions_of(model, positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each token's position not counting padding (what generation gives it), for a model that takes positions:
    models with absolute position embeddings read a left-padded row otherwise as if it started later."""
    return {"position_ids": positions.clamp(min=0)} if forward_accepts(model, "position_ids") else {}


def shared_opening(rows: list[list[int]]) -> int:
    """How many opening tokens the rows share and are worth computing once (0: too few, or a single row); every row
    keeps at least one token of its own."""
    shared = min(common_prefix(rows), min(len(r) for r in rows) - 1)
    return shared if shared >= MIN_SHARED_PREFIX and len(rows) > 1 else 0


@torch.no_grad()
def shared_opening_features(model, rows: list[list[int]], pad_id: int, layers: list[int]
                            ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """:func:`layer_features` for many prompts at once, their common opening (the chat template's system text, a
    shared template) computed once and its cache shared by every row: (input_ids, attention_mask, hidden states) laid
    out as [opening][padding][rest of the row], so that pooling over the attended tokens reads what one pass over
    each prompt reads. Rows keep their own positions (padding does not count). Where the opening is short, or the
    model's cache cannot be shared, it is one plain left-padded pass. Reading the gate's prompts this way skips a
    third to a half of their tokens."""
    device = next(model.parameters()).device
    shared = shared_opening(rows)
    if not shared or not forward_accepts(model, "position_ids"):
        input_ids, attention = left_pad(rows, pad_id, device)
        return input_ids, attention, layer_features(model, input_ids, attention, layers)
    cache = DynamicCache(config=model.config)
    opening_ids = torch.tensor([rows[0][:shared]], device=device)
    with captured_layers(model, layers, stop=True) as opening, suppress(Stop):
        model(input_ids=opening_ids, use_cache=True, **{cache_argument(model): cache})
    cache.batch_repeat_interleave(len(rows))
    rest_ids, rest_attention = left_pad([r[shared:] for r in rows], pad_id, device)
    attention = torch.cat([torch.ones(len(rows), shared, dtype=rest_attention.dtype, device=device),
                           rest_attention], 1)
    positions = (shared + rest_attention.long().cumsum(-1) - 1).clamp(min=shared)
    with captured_layers(model, layers, stop=True) as rest, suppress(Stop):
        model(input_ids=rest_ids, attention_mask=attention, position_ids=positions, use_cache=True,
              **{cache_argument(model): cache})
    hidden = {layer: torch.cat([opening[layer].expand(len(rows), -1, -1), rest[layer]], 1) for layer in rest}
    return torch.cat([opening_ids.expand(len(rows), -1), rest_ids], 1), attention, hidden
