"""Packed training rows, the head at labelled positions only, and the cheaper LoRA dropout: same loss and
gradients as the padded, full-head route (float tolerance), on tiny random models."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from orthopatch.train.data import batch_tokens, collate
from orthopatch.train.dropout import BitsDropout, use_bits_dropout
from orthopatch.train.labelled import labelled_logits, labelled_loss
from orthopatch.train.packing import pack_batch, pack_rows, packing_works
from orthopatch.train.tokenize import IGNORE_INDEX, TokenizedExample
from tests.conftest import build_model


def examples(vocab: int, lengths=(9, 5, 12, 7, 3), seed: int = 0) -> list[TokenizedExample]:
    """Random ids; the last third of each example labelled (an 'answer'), the rest ignored (a 'prompt')."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
        cut = n - max(1, n // 3)
        out.append(TokenizedExample(str(i), ids, [IGNORE_INDEX] * cut + ids[cut:]))
    return out


def lora(arch: str):
    model = build_model(arch, 96, seed=1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():  # a non-zero update, so gradients reach both factors
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return peft_model


def loss_and_grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = labelled_loss(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_rows_come_out_nearly_equal_and_never_split_an_example():
    assert pack_rows([3, 4, 2, 6], 8) == [[2, 3], [0, 1]]  # 15 tokens: two rows, of 8 and 7
    lengths = [62, 60, 65, 58, 61, 64, 63, 59]  # 492 tokens: two rows of 246, where first fit would need three
    rows = pack_rows(lengths, 256)
    assert [sum(lengths[i] for i in row) for row in rows] == [246, 246]
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert pack_rows([10, 2], 8) == [[0], [1]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(arch):
    model = lora(arch)
    assert packing_works(model)
    batch = examples(96)
    padded = collate(batch, 0)
    packed = collate(batch, 0, pack_tokens=16)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer, fuller rows
    assert batch_tokens(packed) == batch_tokens(padded) == sum(len(e.input_ids) for e in batch)
    loss_padded, grads_padded = loss_and_grads(model, padded)
    loss_packed, grads_packed = loss_and_grads(model, packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    for a, b in zip(grads_padded, grads_packed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_model_that_ignores_restarting_positions_is_not_packed():
    class Shifted(torch.nn.Module):  # attends across the whole row whatever the positions say
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    assert not packing_works(Shifted(build_model("llama", 96)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_head_at_labelled_positions_equals_the_full_head_there(arch):
    model = build_model(arch, 96).eval()
    batch = collate(examples(96), 0)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    logits, targets = labelled_logits(model, batch)
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    kept = (targets != IGNORE_INDEX)
    assert int(kept.sum()) == int(labelled.sum())
    keep = labelled.any(0).nonzero().flatten()
    torch.testing.assert_close(logits, full.logits[:, :-1][:, keep].float(), rtol=1e-5, atol=1e-5)
    assert labelled_loss(model, batch).item() == pytest.approx(full.loss.item(), rel=1e-5)


def test_packed_rows_ignore_each_examples_first_label():
    batch = [TokenizedExample("a", [5, 6, 7], [5, 6, 7]), TokenizedExample("b", [8, 9], [8, 9])]
    packed = pack_batch(batch, 0, 8)
    assert packed["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


def test_bits_dropout_drops_at_the_asked_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    dropout = BitsDropout(0.1).train()
    out = dropout(torch.ones(200_000))
    assert (out == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout.eval()(torch.ones(7)), torch.ones(7))


def test_lora_dropout_is_swapped_and_trains_reproducibly():
    model = build_model("llama", 96)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
    assert use_bits_dropout(peft_model) > 0
    assert not any(isinstance(m, torch.nn.Dropout) for m in peft_model.modules())
    batch = collate(examples(96), 0)
    peft_model.train()
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(loss_and_grads(peft_model, batch))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_bf16_autocast_trains_on_the_cpu_and_keeps_the_adapters_in_float32(tiny_model, refusal_jsonl, tmp_path):
    import json

    from orthopatch.train.config import LoraSettings, TrainConfig
    from orthopatch.train.run import train_patch

    patch = train_patch(TrainConfig(model=str(tiny_model), data=[str(refusal_jsonl)], output=str(tmp_path / "p"),
                                    epochs=1, device="cpu", mixed_precision="bf16", lora=LoraSettings(r=2, alpha=4)),
                        progress=False)
    manifest = json.loads((patch / "orthopatch.json").read_text())
    assert manifest["cost"]["mixed_precision"] == "bf16" and manifest["cost"]["packed"]
    assert manifest["cost"]["weights_dtype"] == "float32"  # dtype auto on a CPU: float32
    assert all(row["loss"] == row["loss"] and row["loss"] < 100 for row in
               map(json.loads, (patch / "train_log.jsonl").read_text().splitlines()))


def test_packing_check_allows_half_precision_rounding_only():
    model = build_model("llama", 96).to(torch.bfloat16)
    assert packing_works(model)
