"""The one training loop: seeded batches, process sharding, gradient accumulation, clipping, the objectives' terms,
checkpoint/resume, fault injection and cost accounting.

A plain PyTorch loop under :mod:`accelerate` rather than TRL's trainers: one loop gives every objective the same
resumable checkpoints, fault points, seeded data order and cost record, and ``accelerate launch`` still scales it out
(DDP / DeepSpeed / FSDP) unchanged. Where it is faster than the HF Trainer on the same work (benchmarks/README.md)
it is for three reasons, each in its own module: packed batches (train/packing.py), the head computed at labelled
positions only (train/labelled.py) and a cheaper dropout mask (train/dropout.py).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from orthopatch.faults import fault_point
from orthopatch.train import checkpoint
from orthopatch.train.batching import epoch_batches, example_length, local_share
from orthopatch.train.config import TrainConfig
from orthopatch.train.cost import peak_memory_mb, reset_peak_memory
from orthopatch.train.data import batch_tokens, collate, context_length
from orthopatch.train.objectives import Objective
from orthopatch.train.packing import packing_works
from orthopatch.train.reference import Reference


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint, so a resumed run continues the same accounting."""

    done: int = 0  # batches finished
    log: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    label_tokens: int = 0
    elapsed: float = 0.0


@dataclass
class LoopResult:
    model: torch.nn.Module  # unwrapped
    accelerator: Accelerator
    progress: Progress
    steps: int  # optimizer steps
    wall_seconds: float
    resumed_from: int | None
    peak_memory_mb: float
    packed: bool  # batches were packed rows (cfg.packing, a main objective that packs, a model that keeps them apart)
    mixed_precision: str  # "bf16" (autocast) or "no"


def step_loss(objectives: list[Objective], model, batch, reference: Reference | None, step: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The main objective's loss plus every further term times its weight, and what each logged."""
    loss, row = objectives[0].loss(model, batch, reference, step=step)
    for objective in objectives[1:]:
        term = objective.loss(model, batch, reference, step=step)
        if term is not None:
            loss = loss + objective.weight * term[0]
            row.update(term[1])
    return loss, row


def run_loop(model, examples: list, objectives: list[Objective], reference: Reference | None, cfg: TrainConfig, *,
             pad_id: int, key: str, checkpoints: Path, overwrite: bool, progress_bar: bool) -> LoopResult:
    """Train ``model`` (its parameters that require grad) on ``examples`` for ``cfg.epochs``."""
    device = str(next(model.parameters()).device)
    accelerator = Accelerator(cpu=device == "cpu", gradient_accumulation_steps=cfg.grad_accum)
    precision = mixed_precision(cfg.mixed_precision, device)
    pack_tokens = packed_row_tokens(cfg, model) if cfg.packing and objectives[0].packs and packing_works(model) else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    batches_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if reference is not None:
        reference.accelerator = accelerator
    state, resumed = Progress(), checkpoint.load(checkpoints, key, overwrite)
    if resumed is not None:
        checkpoint.restore(*resumed, model=model, optimizer=optimizer, scheduler=scheduler)
        state = Progress(**{k: resumed[0][k] for k in ("log", "tokens", "label_tokens", "elapsed")},
                         done=resumed[0]["batches_done"])
    resumed_from = state.done if resumed is not None else None
    model.train()
    device = str(accelerator.device)
    reset_peak_memory(device)
    start, total = time.perf_counter(), cfg.epochs * batches_per_epoch
    bar = tqdm(total=total, initial=state.done, desc="train", disable=not progress_bar, file=sys.stderr)
    lengths = [example_length(e) for e in examples] if cfg.group_by_length else None
    for epoch in range(state.done // batches_per_epoch, cfg.epochs):
        batches = epoch_batches(len(examples), cfg.batch_size, cfg.seed, epoch, lengths)
        skip = max(state.done - epoch * batches_per_epoch, 0)  # batches of this epoch a resumed run already did
        for step, indices in enumerate(batches[skip:], start=skip):
            batch = {k: v.to(accelerator.device) for k, v in collate(
                [examples[i] for i in local_share(indices, accelerator)], pad_id, pack_tokens).items()}
            loss, row = train_step(model, batch, objectives, reference, optimizer, scheduler, accelerator,
                                   trainable, cfg.max_grad_norm, state.done, precision)
            state.tokens += batch_tokens(batch)
            state.label_tokens += int((batch["labels"] != -100).sum())
            state.log.append({"epoch": epoch, "step": step, "loss": round(loss, 6), **row,
                              "lr": scheduler.get_last_lr()[0]})
            state.done += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss:.4f}")
            maybe_checkpoint(cfg, state, total, accelerator, checkpoints, key, model, optimizer, scheduler,
                             start)
            fault_point("step", state.done)
    bar.close()
    wall = state.elapsed + time.perf_counter() - start
    if not all(math.isfinite(row["loss"]) for row in state.log):
        raise RuntimeError("training diverged (non-finite loss); nothing was written")
    return LoopResult(accelerator.unwrap_model(model), accelerator, state, steps, wall, resumed_from,
                      peak_memory_mb(device), pack_tokens is not None, precision)


def mixed_precision(setting: str, device: str) -> str:
    """bf16 autocast ("auto": on a CUDA device that supports it). torch's own autocast rather than accelerate's
    mixed_precision, which is process-wide state: a second run in one process could not change it."""
    if setting != "auto":
        return setting
    return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "no"


def packed_row_tokens(cfg: TrainConfig, model) -> int:
    """Rows of about max_length tokens; a row may reach twice that, so at most half the model's context."""
    context = context_length(model)
    return min(cfg.max_length, context // 2) if context else cfg.max_length


def train_step(model, batch, objectives, reference, optimizer, scheduler, accelerator, trainable,
               max_grad_norm: float, step: int, precision: str = "no") -> tuple[float, dict[str, float]]:
    with accelerator.accumulate(model):
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, row = step_loss(objectives, model, batch, reference, step)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        for objective in objectives:
            objective.after_optimizer_step()
        scheduler.step()
        optimizer.zero_grad()
    return loss.item(), row


def maybe_checkpoint(cfg: TrainConfig, state: Progress, total: int, accelerator, checkpoints: Path, key: str,
                     model, optimizer, scheduler, start: float) -> None:
    if cfg.checkpoint_every and state.done % cfg.checkpoint_every == 0 and state.done < total \
            and accelerator.sync_gradients and accelerator.is_main_process:
        checkpoint.save(checkpoints, state.done, key=key, model=model, optimizer=optimizer, scheduler=scheduler,
                        progress={"batches_done": state.done, "log": state.log, "tokens": state.tokens,
                                  "label_tokens": state.label_tokens,
                                  "elapsed": state.elapsed + time.perf_counter() - start})
