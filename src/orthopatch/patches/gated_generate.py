"""Generation with gated patches that reuses the gate's pass as the prefill.

A gate reads the base's hidden states at its layer L, which are exactly the first L layers of the base's prefill.
So the prefill runs once, on the base (every adapter off), and the gate decides inside it, right after layer L:
- if the rows it flags hold L/N of the batch's tokens or more (N layers), the pass stops there (the cost of the gate
  alone) and generation runs as usual, each row with its decision;
- otherwise the pass runs to the end, and the rows the gate passes keep its cache: the gate cost them nothing;
- the flagged rows are prefilled again with the patch and their cache rows replaced (their share of the base pass
  is the gate's cost); then one decoding loop runs for the whole batch, each row with its gate's decision.
A gate that reads only text decides with no pass at all. This applies when every adapter of the model is gated (an
ungated one would change the base's pass), generation is one plain sequence per prompt and no gate reads a row of
unformatted text as a chat message (its pass is not the prefill then); otherwise ``generate`` runs as without it
(the gates then decide in their own partial pass, see :mod:`orthopatch.patches.gate`).
"""

from __future__ import annotations

from contextlib import ExitStack, suppress
from typing import Any

import torch

from orthopatch.models.generation import cache_argument, forward_accepts, output_cache, unpadded
from orthopatch.patches.gates import GateInputs
from orthopatch.patches.hidden_pass import Stop, captured_layers, decoder_layers

UNSUPPORTED = ("past_key_values", "cache", "inputs_embeds", "return_dict_in_generate", "output_scores", "output_logits",
               "assistant_model", "streamer", "prefix_allowed_tokens_fn")


def reusable(peft_model, runtimes: list, kwargs: dict[str, Any]) -> bool:
    """Whether this ``generate`` call can reuse the gate's pass (see the module's docstring)."""
    if not runtimes or "input_ids" not in kwargs or any(kwargs.get(k) is not None for k in UNSUPPORTED):
        return False
    if max(kwargs.get("num_beams") or 1, kwargs.get("num_return_sequences") or 1) > 1:
        return False
    config = peft_model.get_base_model().config  # a sliding-window or recurrent cache cannot be cropped back
    if getattr(config, "sliding_window", None) or set(getattr(config, "layer_types", None) or []) - {"full_attention"}:
        return False
    if any(runtime.gate.wrap is not None and _any_unformatted(runtime.gate.wrap, kwargs) for runtime in runtimes):
        return False  # its gate reads an unformatted row wrapped as a chat message: not the generation's prefill
    gated = {runtime.adapter_name for runtime in runtimes}
    switched_off = any(layer.disable_adapters for runtime in runtimes for layer in runtime.rows.layers[:1])
    return set(peft_model.peft_config) <= gated and not switched_off


def _any_unformatted(wrap, kwargs: dict[str, Any]) -> bool:
    input_ids = kwargs["input_ids"]
    attention = kwargs.get("attention_mask")
    attention = torch.ones_like(input_ids) if attention is None else attention
    return any(wrap.is_raw(row) for row in unpadded(input_ids, attention))


def positions(attention: torch.Tensor) -> torch.Tensor:
    """The position ids ``generate`` gives a left-padded prefill, so the reused cache is the one it would build."""
    return (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)


def flag_rows(runtimes: list, inputs: GateInputs) -> list[torch.Tensor]:
    """Each gate's decision per row (its scores kept on the runtime, as its own pre-hook would)."""
    decisions = []
    for runtime in runtimes:
        runtime.scores = runtime.gate.score(inputs).to(inputs.input_ids.device)
        runtime.remember(inputs.input_ids, inputs.attention, runtime.scores)
        decisions.append(runtime.scores >= runtime.gate.threshold)
    return decisions


def base_prefill(peft_model, runtimes: list, input_ids: torch.Tensor, attention: torch.Tensor
                 ) -> tuple[list[torch.Tensor], Any]:
    """The gates' decisions and, where finishing the base's pass is worth it, its cache of the whole prompt.

    At the gate's layer L of N, finishing costs the rest of the base pass for every row (1 - L/N of a prefill) and
    saves the prefill of the rows the gate passes; stopping costs one masked prefill of every row. So the pass goes
    on while the flagged rows hold less than L/N of the batch's tokens. A gate on text alone decides with no pass
    (finishing one would save nothing)."""
    inner = peft_model.get_base_model()
    layers = sorted({layer for runtime in runtimes for layer in runtime.gate.layers})
    if not layers:
        return flag_rows(runtimes, GateInputs(input_ids, attention)), None
    stack_of_layers = decoder_layers(inner)
    worth = max(layers) / len(stack_of_layers)
    decisions: list[torch.Tensor] = []
    with ExitStack() as stack:
        stack.enter_context(peft_model.disable_adapter())
        for runtime in runtimes:
            stack.enter_context(runtime.deciding())
        captured = stack.enter_context(captured_layers(inner, layers))

        def decide_then_maybe_stop(_module, _inputs, _output):
            decisions.extend(flag_rows(runtimes, GateInputs(input_ids, attention, captured)))
            flagged = torch.stack(decisions).any(0)
            if float(attention[flagged].sum()) >= worth * float(attention.sum()):
                raise Stop

        handle = stack_of_layers[max(layers) - 1].register_forward_hook(decide_then_maybe_stop)
        stack.callback(handle.remove)
        extra = {"logits_to_keep": 1} if forward_accepts(inner, "logits_to_keep") else {}
        with suppress(Stop):
            out = inner(input_ids=input_ids, attention_mask=attention, position_ids=positions(attention),
                        use_cache=True, **extra)
            return decisions, output_cache(out)
    return decisions, None


def patched_prefill(peft_model, runtimes: list, decisions: list[torch.Tensor], cache, input_ids: torch.Tensor,
                    attention: torch.Tensor, flagged: torch.Tensor) -> None:
    """Prefill the flagged rows again with the patch, alone (trimmed to their own padding, as they would be without
    a gate), and write their keys and values into ``cache`` in place of the base's."""
    rows = flagged.nonzero().flatten()
    start = int(attention[rows].any(0).nonzero()[0])  # the sub-batch's own left padding
    sub_attention = attention[rows, start:]
    for runtime, decided in zip(runtimes, decisions, strict=True):
        runtime.preset(decided[rows])
    extra = {"logits_to_keep": 1} if forward_accepts(peft_model.get_base_model(), "logits_to_keep") else {}
    out = peft_model(input_ids=input_ids[rows, start:], attention_mask=sub_attention,
                     position_ids=positions(sub_attention), use_cache=True, **extra)
    for layer, sub in zip(cache.layers, output_cache(out).layers, strict=True):
        for name in ("keys", "values"):
            full = getattr(layer, name)
            full[rows] = 0  # the columns left of the sub-batch are padding: masked, never read
            full[rows, :, start:] = getattr(sub, name)


def generate_reusing_gate_pass(peft_model, plain_generate, runtimes: list, **kwargs) -> torch.Tensor:
    """``generate`` for a model whose adapters are all gated: one base prefill shared by the gates and the rows
    they pass, the flagged rows prefilled again with the patch, then one decoding loop for the whole batch."""
    input_ids = kwargs.pop("input_ids")
    attention = kwargs.pop("attention_mask", None)
    attention = torch.ones_like(input_ids) if attention is None else attention
    decisions, cache = base_prefill(peft_model, runtimes, input_ids, attention)
    flagged = torch.stack(decisions).any(0)
    extra = {}
    if cache is not None:  # some row passed: its prefill is done
        if bool(flagged.any()):
            patched_prefill(peft_model, runtimes, decisions, cache, input_ids, attention, flagged)
        cache.crop(-1)  # generate computes the last prompt token again, with the cache before it
        extra[cache_argument(peft_model.get_base_model())] = cache
    for runtime, decided in zip(runtimes, decisions, strict=True):
        runtime.preset(decided)
    return plain_generate(input_ids=input_ids, attention_mask=attention, **extra, **kwargs)


def reuse_gate_pass(peft_model, plain_generate, runtimes: list):
    """A ``generate`` for ``peft_model`` that reuses the gate's pass where it can, else calls ``plain_generate``."""
    def generate(*args, **kwargs):
        if args and "input_ids" not in kwargs:
            kwargs["input_ids"], args = args[0], args[1:]
        if args or not reusable(peft_model, runtimes, kwargs):
            return plain_generate(*args, **kwargs)
        return generate_reusing_gate_pass(peft_model, plain_generate, runtimes, **kwargs)
    return generate
