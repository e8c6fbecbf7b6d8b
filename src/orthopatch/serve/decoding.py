"""A batch of jobs decoding together, which new jobs join between steps (continuous batching).

Prompts are left-padded so that every row ends at its last prompt token; positions count attended tokens only (as
``generate`` computes them), so a row's numbers do not depend on its padding. New jobs are prefilled together in
their own KV cache (recording the hidden states their gates read), then joined to the running rows: the shorter cache is left-padded with masked slots, so every
row keeps one shared cache length. Each step feeds one token per row; a row whose job has finished leaves the batch
at once (its cache rows and patch flags go with it), so short answers do not wait for long ones and a freed row is
filled at the next step. Each patch's row flags are set on its :class:`RowMask` before every forward pass.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from orthopatch.models.generation import cache_argument, left_pad
from orthopatch.patches.gate import captured_layers
from orthopatch.patches.routing import RowMask
from orthopatch.serve.jobs import Job, next_tokens


def _left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Pad ``tensor`` on the left of ``dim`` (0 = masked or empty) up to ``length``."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return F.pad(tensor, pad)


@dataclass
class Prefill:
    """New rows after their prompt's forward pass, before they join: their KV cache, mask, last positions, the
    logits of their next token, and hidden states captured for gates."""

    jobs: list[Job]
    flags: list[torch.Tensor]
    cache: DynamicCache
    attention: torch.Tensor
    position: torch.Tensor  # (rows, 1): the last prompt position
    logits: torch.Tensor
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    input_ids: torch.Tensor | None = None  # the prompts, for gates that read their text

    def select(self, rows: list[int]) -> Prefill:
        index = torch.tensor(rows, device=self.attention.device)
        self.cache.batch_select_indices(index)
        return Prefill([self.jobs[r] for r in rows], [f[index.cpu()] for f in self.flags], self.cache,
                       self.attention[index], self.position[index], self.logits[index],
                       {layer: hidden[index] for layer, hidden in self.features.items()},
                       None if self.input_ids is None else self.input_ids[index])


class Batch:
    def __init__(self, model, pad_id: int, masks: list[RowMask]) -> None:
        self.model, self.pad_id, self.masks = model, pad_id, masks
        self.cache_name = cache_argument(model)  # asked once, not on every decoding step
        self.device = next(model.parameters()).device
        self.jobs: list[Job] = []
        self._reset()

    def _reset(self) -> None:
        self.jobs = []
        self.flags = [torch.zeros(0, dtype=torch.bool) for _ in self.masks]
        self.cache = self.attention = self.position = self.logits = None

    def __len__(self) -> int:
        return len(self.jobs)

    def can_join(self) -> bool:
        """Rows can join a running batch when every cache layer is a plain (full-attention) dynamic layer; a
        sliding-window cache cannot be left-padded, so there new rows wait until the batch has finished."""
        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def _forward(self, input_ids, attention, position, cache, flags, **kwargs) -> torch.Tensor:
        for mask, rows in zip(self.masks, flags, strict=True):
            mask.set(rows)
        return self.model(input_ids=input_ids, attention_mask=attention, position_ids=position,
                          **{self.cache_name: cache}, use_cache=True, **kwargs).logits[:, -1]

    @torch.no_grad()
    def prefill(self, jobs: list[Job], flags: list[torch.Tensor], capture: list[int] = ()) -> Prefill:
        """The prompts' forward pass (``flags``: per patch, which rows get its update), recording the hidden
        states after the ``capture`` layers (a gate decides from them without a pass of its own)."""
        input_ids, attention = left_pad([job.prompt_ids for job in jobs], self.pad_id, self.device)
        position = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        cache = DynamicCache(config=self.model.config)
        with captured_layers(self.model, list(capture)) if capture else nullcontext({}) as features:
            logits = self._forward(input_ids, attention, position, cache, flags, logits_to_keep=1)
        return Prefill(list(jobs), list(flags), cache, attention, position[:, -1:], logits, dict(features),
                       input_ids)

    def add(self, rows: Prefill) -> None:
        """Join prefilled rows to the running ones (the shorter cache is left-padded with masked slots)."""
        if not self.jobs:
            self.jobs, self.flags, self.cache, self.attention = rows.jobs, rows.flags, rows.cache, rows.attention
            self.position, self.logits = rows.position, rows.logits
            return
        length = max(self.attention.shape[1], rows.attention.shape[1])
        for mine, theirs in zip(self.cache.layers, rows.cache.layers, strict=True):
            mine.keys = torch.cat([_left(mine.keys, length, -2), _left(theirs.keys, length, -2)])
            mine.values = torch.cat([_left(mine.values, length, -2), _left(theirs.values, length, -2)])
        self.attention = torch.cat([_left(self.attention, length, 1), _left(rows.attention, length, 1)])
        self.position = torch.cat([self.position, rows.position])
        self.logits = torch.cat([self.logits, rows.logits])
        self.flags = [torch.cat([mine, theirs]) for mine, theirs in zip(self.flags, rows.flags, strict=True)]
        self.jobs = self.jobs + rows.jobs

    @torch.no_grad()
    def step(self) -> None:
        """One token for every row; finished rows leave; the rest run one forward pass for the next token."""
        tokens = next_tokens(self.logits, self.jobs)
        keep = [row for row, (job, token) in enumerate(zip(self.jobs, tokens, strict=True)) if not job.accept(token)]
        if not keep:
            self._reset()
            return
        if len(keep) < len(self.jobs):
            rows = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(rows)
            self.attention, self.position = self.attention[rows], self.position[rows]
            self.flags = [flags[rows.cpu()] for flags in self.flags]
            self.jobs, tokens = [self.jobs[row] for row in keep], [tokens[row] for row in keep]
        self.attention = torch.cat([self.attention, self.attention.new_ones(len(self.jobs), 1)], dim=1)
        self.position = self.position + 1
        step = torch.tensor(tokens, device=self.device).unsqueeze(1)
        self.logits = self._forward(step, self.attention, self.position, self.cache, self.flags)


def decode(model, jobs: list[Job], pad_id: int, masks: list[RowMask], flags: list[torch.Tensor]) -> None:
    """Run ``jobs`` to completion as one batch (nobody joins)."""
    batch = Batch(model, pad_id, masks)
    batch.add(batch.prefill(jobs, flags))
    while batch:
        batch.step()
