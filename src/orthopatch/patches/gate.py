"""The gate of a selective patch at run time: a probe on what a prompt looks like (the frozen base's hidden states,
a sentence encoder's embedding, a user's guard classifier: :mod:`orthopatch.patches.gates`) decides, per prompt,
whether the patch acts. Prompts it passes run on the unmodified base, so their answers are the base's by
construction; flagged prompts get the patch.

At run time a gate is two kinds of hook on a PEFT model (:func:`attach_gate`): a pre-hook on the transformers model
decides, whenever a new sequence starts (no cache yet: a prefill, or any plain forward call), from the base's hidden
states at the gate's layers (the adapters switched off, the forward stopped right after the deepest; no pass at all
for a gate that reads only the prompt's text), and hooks on the
adapter's ``lora_B`` modules multiply each row's update by its 0/1 decision (a batch with no flagged row skips
the update altogether). So gated and ungated prompts share one
batch in ``generate`` and in every metric's forward pass, a gate-off row computes exactly the base's numbers, and
any number of gated and ungated patches can be attached side by side. PEFT's own per-row routing
(``adapter_names=``) gives each row one adapter, which cannot express a gated patch stacked with ungated ones.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress

import torch

from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids, left_pad
from orthopatch.patches.gates import GATE_CONFIG, GATE_TOKENIZER, GATE_WEIGHTS, Gate, GateInputs, pool
from orthopatch.patches.routing import RowMask

__all__ = ["GATE_CONFIG", "GATE_TOKENIZER", "GATE_WEIGHTS", "Gate", "GateInputs", "GateRuntime", "attach_gate",
           "captured_layers", "decoder_layers", "gate_inputs", "gate_scores", "gate_summary", "gates_of",
           "layer_features", "pool", "score_features"]


def gate_summary(gate: Gate) -> dict:
    """What a manifest says of a gate (the full record, with every candidate, is in gate.json)."""
    files = [GATE_CONFIG, GATE_WEIGHTS] + ([GATE_TOKENIZER] if gate.reader is not None else [])
    return {**gate.summary(), "describe": gate.describe(), "layer": gate.layer, "l2": gate.info.get("l2"),
            "validation": gate.info.get("validation"), "fitted_on": gate.info.get("fitted_on"), "files": files}


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (``model.layers`` in Llama/Qwen, ``transformer.h`` in GPT-2, ...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the decoder layers of {type(model).__name__} (looked for a list of {n} layers)")


class _Stop(Exception):
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
                raise _Stop
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
    with captured_layers(model, layers, stop=True) as captured, suppress(_Stop):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return captured


def gate_inputs(model, input_ids: torch.Tensor, attention: torch.Tensor, layers: list[int]) -> GateInputs:
    """What a gate reads of a batch: the ids and, where it reads any, the base's hidden states (one partial pass)."""
    return GateInputs(input_ids, attention, layer_features(model, input_ids, attention, layers) if layers else {})


def score_features(gates: list[Gate], inputs: GateInputs) -> list[float]:
    """Row i's logit under ``gates[i]`` from a batch's inputs (hidden states captured for every gate's layers);
    the rows of one gate are scored together."""
    out = [0.0] * len(gates)
    for gate in {id(g): g for g in gates}.values():
        rows = [row for row, g in enumerate(gates) if g is gate]
        for row, score in zip(rows, gate.score(inputs.rows(torch.tensor(rows))).tolist(), strict=True):
            out[row] = score
    return out


class GateRuntime:
    """One gated adapter on one PEFT model: decides per row at the start of each sequence, masks the update."""

    def __init__(self, peft_model, adapter_name: str, gate: Gate) -> None:
        self.peft_model, self.adapter_name, self.gate = peft_model, adapter_name, gate
        self.scores: torch.Tensor | None = None
        self._deciding = False
        try:
            self.rows = RowMask(peft_model, adapter_name)
        except UserError:
            raise UserError(f"the gated adapter {adapter_name!r} has no LoRA layers on this model") from None
        inner = peft_model.get_base_model()
        self.handle = inner.register_forward_pre_hook(self._decide, with_kwargs=True)

    @property
    def mask(self) -> torch.Tensor | None:
        return self.rows.mask

    def decide(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The probe's logits for a batch of sequences (the base's hidden states: every adapter switched off)."""
        self._deciding = True
        try:
            with self.peft_model.disable_adapter():
                inputs = gate_inputs(model, input_ids, attention_mask, self.gate.layers)
        finally:
            self._deciding = False
        return self.gate.score(inputs).to(input_ids.device)

    def _decide(self, module, args, kwargs):
        if self._deciding:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("a gated patch needs input_ids (it reads the prompt's tokens), not inputs_embeds")
        attention = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        cached = cache is not None and (cache.get_seq_length() if hasattr(cache, "get_seq_length") else len(cache))
        if cached or (attention is not None and attention.shape[-1] != input_ids.shape[1]):
            if self.mask is None or self.mask.shape[0] != input_ids.shape[0]:
                raise RuntimeError("gated patch: a cached decoding step without the gate decision of its prefill")
            return None  # a decoding step (earlier tokens in the cache): the decision of the prefill stands
        if attention is None:
            attention = torch.ones_like(input_ids)
        self.scores = self.decide(module, input_ids, attention)
        self.rows.set(self.scores >= self.gate.threshold)
        return None

    def remove(self) -> None:
        self.rows.remove()
        self.handle.remove()


def attach_gate(peft_model, adapter_name: str, gate: Gate) -> GateRuntime:
    """Make ``adapter_name`` act only on prompts the gate flags. ``peft_model.unload()`` removes the gate with the
    adapters; ``merge_and_unload()`` is refused (a conditional patch is not a weight delta)."""
    runtime = GateRuntime(peft_model, adapter_name, gate)
    runtimes = peft_model.__dict__.setdefault("_orthopatch_gates", [])
    if not runtimes:
        unload, merge = peft_model.unload, peft_model.merge_and_unload

        def unload_with_gates(*args, **kwargs):
            for each in peft_model.__dict__.pop("_orthopatch_gates", []):
                each.remove()
            return unload(*args, **kwargs)

        def refuse_merge(*args, **kwargs):
            raise UserError("a gated patch is conditional, not a weight delta: it cannot be merged into the base "
                            "(orthopatch patch merge --unconditional merges its LoRA part as if always on)")

        peft_model.__dict__["unload"], peft_model.__dict__["merge_and_unload"] = unload_with_gates, refuse_merge
        del merge
    runtimes.append(runtime)
    return runtime


@torch.no_grad()
def gate_scores(runtime: GateRuntime, tokenizer, prompts: list[str], batch_size: int = 16) -> list[float]:
    """The gate's logit for each chat-formatted prompt, exactly as generation would compute it."""
    ids = chat_prompt_ids(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    inner = runtime.peft_model.get_base_model()
    device = next(inner.parameters()).device
    out = [0.0] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_pad([ids[i] for i in chunk], tokenizer.pad_token_id, device)
        for index, score in zip(chunk, runtime.decide(inner, input_ids, attention).tolist(), strict=True):
            out[index] = score
    return out


def gates_of(model) -> list[GateRuntime]:
    """The gates attached to a model (none for a plain model or an ungated patch)."""
    return list(getattr(model, "__dict__", {}).get("_orthopatch_gates", []))
