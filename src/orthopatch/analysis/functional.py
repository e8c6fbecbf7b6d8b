"""Functional measures of a patch: how far it moves hidden states, and the interference terms of PAPER.md 5.2.

- hidden-state shift per layer, patched vs base, at the last prompt token and mean-pooled over the prompt, on a
  benign set and on a jailbreak set (the paper: LoRA moves benign states less and jailbreak states more);
- interference ‖W0·x_Δ + ΔW·x_0‖ / ‖W0·x‖ per module on benign inputs, with x_0 = V0 V0ᵀ x (W0's top-k input
  subspace) and x_Δ = V_Δ V_Δᵀ x (the update's input subspace): ~0 when the two subspaces are orthogonal.
"""

from __future__ import annotations

import contextlib

import torch

from orthopatch.analysis.deltas import ModuleDelta
from orthopatch.models.generation import chat_prompt_ids, left_pad


@torch.no_grad()
def _hidden_states(model, input_ids, attention) -> list[torch.Tensor]:
    out = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True)
    return [h.double() for h in out.hidden_states[1:]]  # one per block; [0] is the embedding output


@torch.no_grad()
def hidden_shift(base_model, patched_model, tokenizer, prompts: list[str], *, batch_size: int = 8,
                 base_context=contextlib.nullcontext) -> list[dict[str, float]]:
    """Per layer: mean ‖h_patched - h_base‖ (last token; mean-pooled) and the same relative to ‖h_base‖.

    ``base_context`` turns ``patched_model`` into the base when they are the same object (PEFT's disable_adapter).
    """
    ids = chat_prompt_ids(tokenizer, prompts)
    sums: list[dict[str, float]] = []
    for start in range(0, len(ids), batch_size):
        input_ids, attention = left_pad(ids[start:start + batch_size], tokenizer.pad_token_id, patched_model.device)
        patched = _hidden_states(patched_model, input_ids, attention)
        with base_context():
            base = _hidden_states(base_model, input_ids, attention)
        mask = attention.unsqueeze(-1).double()
        for layer, (hp, hb) in enumerate(zip(patched, base, strict=True)):
            if len(sums) <= layer:
                sums.append({"last": 0.0, "last_relative": 0.0, "mean_pooled": 0.0, "mean_pooled_relative": 0.0})
            diff_last, base_last = hp[:, -1] - hb[:, -1], hb[:, -1]
            pooled_p = (hp * mask).sum(1) / mask.sum(1)
            pooled_b = (hb * mask).sum(1) / mask.sum(1)
            row = sums[layer]
            row["last"] += float(diff_last.norm(dim=-1).sum())
            row["last_relative"] += float((diff_last.norm(dim=-1) / base_last.norm(dim=-1)).sum())
            row["mean_pooled"] += float((pooled_p - pooled_b).norm(dim=-1).sum())
            row["mean_pooled_relative"] += float(((pooled_p - pooled_b).norm(dim=-1) / pooled_b.norm(dim=-1)).sum())
    return [{key: value / len(ids) for key, value in row.items()} for row in sums]


@torch.no_grad()
def interference(base_model, tokenizer, prompts: list[str], deltas: list[ModuleDelta], V0: dict[str, torch.Tensor],
                 *, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Per module, means over benign tokens (inputs captured from the base model) of
    ``interference`` = ‖W0·x_Δ + ΔW·x_0‖ / ‖W0·x‖ and ``update_response`` = ‖ΔW·x‖ / ‖W0·x‖ (how much the update
    changes the module's output on benign inputs)."""
    by_name = {d.name: d for d in deltas}
    totals = {name: [0.0, 0.0, 0] for name in by_name}
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    named = dict(base_model.named_modules())
    for name in by_name:
        module = named.get(name) or named.get(f"model.{name}") or named.get(name.removeprefix("model."))
        if module is None:
            continue

        def hook(_module, inputs, _output, name=name):
            captured[name] = inputs[0].detach()

        hooks.append(module.register_forward_hook(hook))
    try:
        ids = chat_prompt_ids(tokenizer, prompts)
        for start in range(0, len(ids), batch_size):
            input_ids, attention = left_pad(ids[start:start + batch_size], tokenizer.pad_token_id, base_model.device)
            captured.clear()
            base_model(input_ids=input_ids, attention_mask=attention)
            keep = attention.bool().reshape(-1)
            for name, x in captured.items():
                delta = by_name[name]
                x = x.reshape(-1, x.shape[-1])[keep].double()
                v0 = V0[name]
                x0 = (x @ v0) @ v0.T
                xd = (x @ delta.delta.V) @ delta.delta.V.T
                term = xd @ delta.W0.T + ((x0 @ delta.delta.V) * delta.delta.S) @ delta.delta.U.T
                base_out = (x @ delta.W0.T).norm(dim=-1).clamp_min(1e-12)
                update_out = ((x @ delta.delta.V) * delta.delta.S) @ delta.delta.U.T
                totals[name][0] += float((term.norm(dim=-1) / base_out).sum())
                totals[name][1] += float((update_out.norm(dim=-1) / base_out).sum())
                totals[name][2] += x.shape[0]
    finally:
        for handle in hooks:
            handle.remove()
    return {name: {"interference": cross / count, "update_response": update / count}
            for name, (cross, update, count) in totals.items() if count}
