"""Which examples go into which batch, on which process: seeded, optionally grouped by length, and sharded so that
every process takes a slice of the same global batch."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation, so a resumed run sees the same batches. With ``lengths``,
    grouped by length (as the HF Trainer's ``group_by_length``): the permutation is cut into chunks of 16 batches,
    each chunk sorted by length and cut into batches, and the batches shuffled, so that a batch pads little while the
    order stays random."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    chunk = 16 * batch_size
    grouped = [i for start in range(0, n_examples, chunk)
               for i in sorted(order[start:start + chunk], key=lambda i: -lengths[i])]
    batches = [grouped[i:i + batch_size] for i in range(0, n_examples, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def example_length(example) -> int:
    pair = getattr(example, "chosen", None)
    return max(len(pair.input_ids), len(example.rejected.input_ids)) if pair is not None else len(example.input_ids)


def local_share(indices: list[int], accelerator: Accelerator) -> list[int]:
    """This process's contiguous share of a batch. Under ``accelerate launch`` every process takes a slice of the
    same global batch (DDP averages their gradients), so the optimisation (global batch, steps, schedule) is the
    same whatever the number of processes. accelerate's own batch splitting needs a sized BatchSampler, and the
    seeded per-epoch batches here are a plain list (it falls back to handing out whole batches in turn)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if len(indices) < world:  # a last batch smaller than the world: every process takes all of it
        return indices
    return indices[rank * len(indices) // world:(rank + 1) * len(indices) // world]
