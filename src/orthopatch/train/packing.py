"""Padding-free batches: a batch's examples laid end to end in rows of about ``row_tokens`` tokens, with
``position_ids`` restarting at every example and no attention mask, so that transformers builds the block-diagonal
causal mask itself (``masking_utils.find_packed_sequence_indices``) and no token attends across examples.

Whether a model honours that is checked numerically once per model (:func:`packing_works`): a model whose attention
ignores restarting positions (an older architecture, a custom one) trains on padded batches instead.
"""

from __future__ import annotations

import torch

from orthopatch.train.tokenize import IGNORE_INDEX, TokenizedExample


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Example indices per row: as many rows as ``row_tokens`` per row needs, filled longest example first into the
    shortest row, so that rows come out nearly equal and hardly any padding is left (a row may pass ``row_tokens``
    by less than its longest example). Deterministic: ties go to the lower index."""
    n_rows = max(1, -(-sum(lengths) // row_tokens))
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    filled = [0] * n_rows
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = min(range(n_rows), key=lambda r: (filled[r], r))
        rows[row].append(index)
        filled[row] += lengths[index]
    return [sorted(row) for row in rows if row]


def pack_batch(examples: list[TokenizedExample], pad_id: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids`` and ``labels`` of the packed rows, plus ``token_mask`` (1 on real tokens; it
    is for counting, not for the model). A row shorter than the widest is filled with one pad segment whose
    positions restart too, so it is a block of its own and its labels are ignored. Each example's first label is
    ignored: in a row it would be predicted from the previous example's last token."""
    rows = pack_rows([len(e.input_ids) for e in examples], row_tokens)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(examples[i].input_ids)
            input_ids[r, at:at + n] = torch.tensor(examples[i].input_ids)
            labels[r, at + 1:at + n] = torch.tensor(examples[i].labels[1:])
            positions[r, at:at + n] = torch.arange(n)
            real[r, at:at + n] = 1
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "position_ids": positions, "labels": labels, "token_mask": real}


@torch.no_grad()
def packing_works(model) -> bool:
    """Whether ``model`` keeps packed examples apart: the logits of two short random sequences laid end to end
    equal their logits computed one by one (float tolerance). Run in eval mode (no dropout); the model's mode is
    restored."""
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        vocab = model.get_input_embeddings().num_embeddings
        device = model.get_input_embeddings().weight.device
        a, b = (torch.randint(0, vocab, (1, n), generator=generator).to(device) for n in (3, 4))
        apart = [model(input_ids=x, use_cache=False).logits for x in (a, b)]
        positions = torch.cat([torch.arange(3), torch.arange(4)]).unsqueeze(0).to(device)
        together = model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits.float()
        apart = torch.cat(apart, 1).float()
        # attending across examples moves logits by O(their scale); rounding in half precision by far less
        tolerance = 1e-4 if model.get_input_embeddings().weight.dtype == torch.float32 else 3e-2
        return bool((together - apart).abs().max() <= tolerance * max(1.0, float(apart.abs().max())))
    except (TypeError, ValueError, RuntimeError):  # a model that takes no position_ids, or no mask-free batch
        return False
    finally:
        model.train(was_training)
