"""Decode one batch of jobs together (the nanoGPT-sized loop the engine runs).

Prompts are left-padded so that every row ends at its last prompt token; positions count attended tokens only (as
``generate`` computes them), so a row's numbers do not depend on the padding. Each step feeds one token per row
through a shared KV cache; a row whose job has finished leaves the batch at once (its cache rows and its patch
masks are dropped with it), so short answers do not pay for long ones.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from orthopatch.models.generation import left_pad
from orthopatch.patches.routing import RowMask
from orthopatch.serve.jobs import Job, next_tokens


@torch.no_grad()
def decode(model, jobs: list[Job], pad_id: int, masks: list[RowMask]) -> None:
    """Run ``jobs`` to completion; their row masks must already be set (one entry per job, in order)."""
    device = next(model.parameters()).device
    input_ids, attention = left_pad([job.prompt_ids for job in jobs], pad_id, device)
    position = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    live = list(range(len(jobs)))  # the jobs still in the batch, in row order
    while True:
        tokens = next_tokens(logits, [jobs[i] for i in live])
        keep = [row for row, (i, token) in enumerate(zip(live, tokens, strict=True)) if not jobs[i].accept(token)]
        if not keep:
            return
        if len(keep) < len(live):
            rows = torch.tensor(keep, device=device)
            cache.batch_select_indices(rows)
            attention, position = attention[rows], position[rows]
            for mask in masks:
                mask.keep_rows(rows)
            live, tokens = [live[row] for row in keep], [tokens[row] for row in keep]
        attention = torch.cat([attention, attention.new_ones(len(live), 1)], dim=1)
        position = position[:, -1:] + 1
        step = torch.tensor(tokens, device=device).unsqueeze(1)
        logits = model(input_ids=step, attention_mask=attention, position_ids=position, past_key_values=cache,
                       use_cache=True).logits[:, -1]
