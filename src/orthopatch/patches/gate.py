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

from collections import OrderedDict
from contextlib import contextmanager

import torch

from orthopatch.errors import UserError
from orthopatch.models.generation import chat_prompt_ids, left_pad, unpadded
from orthopatch.patches.gated_generate import reuse_gate_pass
from orthopatch.patches.gates import GATE_CONFIG, GATE_TOKENIZER, GATE_WEIGHTS, Gate, GateInputs, pool
from orthopatch.patches.gates.unformatted import ChatWrap, read_unformatted
from orthopatch.patches.hidden_pass import (
    captured_layers,
    decoder_layers,
    layer_features,
    shared_opening_features,
)
from orthopatch.patches.routing import RowMask

__all__ = ["GATE_CONFIG", "GATE_TOKENIZER", "GATE_WEIGHTS", "Gate", "GateInputs", "GateRuntime", "attach_gate",
           "captured_layers", "decoder_layers", "gate_inputs", "gate_scores", "gate_summary", "gates_of",
           "layer_features", "pool", "score_features"]

# Gate scores kept per runtime (GateRuntime.seen): enough for any evaluation, bounded for a long-lived process.
SEEN_LIMIT = 100_000


def gate_summary(gate: Gate) -> dict:
    """What a manifest says of a gate (the full record, with every candidate, is in gate.json)."""
    files = [GATE_CONFIG, GATE_WEIGHTS] + ([GATE_TOKENIZER] if gate.reader is not None else [])
    return {**gate.summary(), "describe": gate.describe(), "layer": gate.layer, "l2": gate.info.get("l2"),
            "validation": gate.info.get("validation"), "fitted_on": gate.info.get("fitted_on"), "files": files}


def gate_inputs(model, input_ids: torch.Tensor, attention: torch.Tensor, layers: list[int],
                wrap: ChatWrap | None = None) -> GateInputs:
    """What a gate reads of a batch: the ids (unformatted rows read as a chat message where the gate has a
    ``wrap``) and, where it reads any, the base's hidden states (one partial pass)."""
    input_ids, attention = read_unformatted(wrap, input_ids, attention)
    return GateInputs(input_ids, attention, layer_features(model, input_ids, attention, layers) if layers else {})


def many_gate_inputs(model, rows: list[list[int]], pad_id: int, layers: list[int], wrap: ChatWrap | None = None
                     ) -> GateInputs:
    """:func:`gate_inputs` for a batch of many prompts read at once (fitting a gate, scoring a set): the same
    values, with the batch's common opening computed once (:func:`shared_opening_features`)."""
    input_ids, attention = read_unformatted(wrap, *left_pad(rows, pad_id, next(model.parameters()).device))
    if not layers:
        return GateInputs(input_ids, attention, {})
    return GateInputs(*shared_opening_features(model, unpadded(input_ids, attention), pad_id, layers))


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
        self._preset = False  # the next new sequence's decision was made already (the shared prefill)
        # the scores generation computed, by prompt token ids, so reporting them needs no pass of its own
        self.seen: OrderedDict[tuple[int, ...], float] = OrderedDict()
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
        with self.deciding(), self.peft_model.disable_adapter():
            inputs = gate_inputs(model, input_ids, attention_mask, self.gate.layers, self.gate.wrap)
        return self.gate.score(inputs).to(input_ids.device)

    @contextmanager
    def deciding(self):
        """Within the block the pre-hook leaves forward passes alone (they are the gate's own)."""
        self._deciding = True
        try:
            yield
        finally:
            self._deciding = False

    def preset(self, flagged: torch.Tensor) -> None:
        """The rows of the next batch that get the update, decided already (see gated_generate.py)."""
        self.rows.set(flagged)
        self._preset = True

    def _decide(self, module, args, kwargs):
        if self._deciding:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("a gated patch needs input_ids (it reads the prompt's tokens), not inputs_embeds")
        attention = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        cached = cache is not None and (cache.get_seq_length() if hasattr(cache, "get_seq_length") else len(cache))
        preset, self._preset = self._preset, False
        if cached or preset or (attention is not None and attention.shape[-1] != input_ids.shape[1]):
            if self.mask is None or self.mask.shape[0] != input_ids.shape[0]:
                raise RuntimeError("gated patch: a cached decoding step without the gate decision of its prefill")
            return None  # a decoding step (earlier tokens in the cache) or a decided prefill: the decision stands
        if attention is None:
            attention = torch.ones_like(input_ids)
        self.scores = self.decide(module, input_ids, attention)
        self.remember(input_ids, attention, self.scores)
        self.rows.set(self.scores >= self.gate.threshold)
        return None

    def remember(self, input_ids: torch.Tensor, attention: torch.Tensor, scores: torch.Tensor) -> None:
        """Keep each row's score by its unpadded token ids (the latest SEEN_LIMIT prompts)."""
        for row, score in zip(unpadded(input_ids, attention), scores.tolist(), strict=True):
            self.seen[tuple(row)] = score
        while len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)

    def remove(self) -> None:
        """Detach the gate: the adapter then acts on every row."""
        self.rows.remove()
        self.handle.remove()
        runtimes = self.peft_model.__dict__.get("_orthopatch_gates", [])
        if self in runtimes:
            runtimes.remove(self)


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
            for name in ("unload", "merge_and_unload", "generate"):
                peft_model.__dict__.pop(name, None)
            return unload(*args, **kwargs)

        def refuse_merge(*args, **kwargs):
            raise UserError("a gated patch is conditional, not a weight delta: it cannot be merged into the base "
                            "(orthopatch patch merge --unconditional merges its LoRA part as if always on)")

        peft_model.__dict__["unload"], peft_model.__dict__["merge_and_unload"] = unload_with_gates, refuse_merge
        peft_model.__dict__["generate"] = reuse_gate_pass(peft_model, peft_model.generate, runtimes)
        del merge
    runtimes.append(runtime)
    return runtime


@torch.no_grad()
def gate_scores(runtime: GateRuntime, tokenizer, prompts: list[str], batch_size: int = 16) -> list[float]:
    """The gate's logit for each chat-formatted prompt, exactly as generation would compute it (the score that
    generation did compute, where the prompt was generated for)."""
    ids = chat_prompt_ids(tokenizer, prompts)
    seen = [runtime.seen.get(tuple(row)) for row in ids]
    order = sorted((i for i in range(len(ids)) if seen[i] is None), key=lambda i: len(ids[i]), reverse=True)
    inner = runtime.peft_model.get_base_model()
    device = next(inner.parameters()).device
    out = [0.0 if score is None else score for score in seen]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attention = left_pad([ids[i] for i in chunk], tokenizer.pad_token_id, device)
        for index, score in zip(chunk, runtime.decide(inner, input_ids, attention).tolist(), strict=True):
            out[index] = score
    return out


def gates_of(model) -> list[GateRuntime]:
    """The gates attached to a model (none for a plain model or an ungated patch)."""
    return list(getattr(model, "__dict__", {}).get("_orthopatch_gates", []))
