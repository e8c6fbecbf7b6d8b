"""Each training component alone on a tiny model: the objectives' loss values on hand-checkable batches, where their
gradients go, and the loop's batching, sharding and collation."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from orthopatch.config import make
from orthopatch.models.loading import load_model
from orthopatch.train.adapters import lora_config
from orthopatch.train.batching import epoch_batches, local_share
from orthopatch.train.config import TrainConfig
from orthopatch.train.data import PreferencePair, collate
from orthopatch.train.loop import step_loss
from orthopatch.train.objectives import OBJECTIVES
from orthopatch.train.objectives.dpo import DPO, sequence_logprobs
from orthopatch.train.objectives.ortho import Orthogonality, ortho_modules, ortho_penalty, project_out
from orthopatch.train.objectives.retain import RetainKL, kl_to_reference
from orthopatch.train.objectives.sft import SFT
from orthopatch.train.reference import Reference
from orthopatch.train.tokenize import IGNORE_INDEX, TokenizedExample


@pytest.fixture
def lora_model(tiny_model):
    torch.manual_seed(0)
    model, tokenizer, info = load_model(str(tiny_model), device="cpu")
    cfg = make(TrainConfig, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    peft_model = get_peft_model(model, lora_config(cfg, model))
    with torch.no_grad():  # B starts at zero; give the patch an effect so policy and base differ
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return peft_model, tokenizer, info


def batch_of(rows: list[list[int]], labelled_from: int) -> dict[str, torch.Tensor]:
    examples = [TokenizedExample(str(i), ids, [IGNORE_INDEX] * labelled_from + ids[labelled_from:])
                for i, ids in enumerate(rows)]
    return collate(examples, pad_id=2)


def grads_only_on_lora(model) -> bool:
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return bool(with_grad) and all("lora_" in n for n in with_grad)


def test_registry_names_every_objective_once():
    assert list(OBJECTIVES) == ["sft", "dpo", "retain", "ortho"]
    assert {cls.name for cls in OBJECTIVES.values()} == set(OBJECTIVES)


def test_sft_is_cross_entropy_on_labelled_tokens_only(lora_model):
    model, _, _ = lora_model
    batch = batch_of([[5, 6, 7, 8, 9], [10, 11, 12]], labelled_from=2)
    loss, logs = SFT().loss(model, batch, None, step=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, manual, atol=1e-6) and logs["sft_loss"] == round(loss.item(), 6)
    assert int((targets != -100).sum()) == 3 + 1  # prompt and padding never count
    loss.backward()
    assert grads_only_on_lora(model)


def test_dpo_loss_is_the_sigmoid_loss_against_the_base(lora_model):
    model, _, _ = lora_model
    batch = batch_of([[5, 6, 7, 8], [5, 6, 9, 9], [12, 13, 7], [12, 13, 30]], labelled_from=2)
    reference = Reference(None)
    objective = DPO(beta=0.5)
    loss, logs = objective.loss(model, batch, reference, step=0)
    policy = sequence_logprobs(model, batch)
    with model.disable_adapter():
        base = sequence_logprobs(model, batch)
    margin = 0.5 * ((policy[0::2] - base[0::2]) - (policy[1::2] - base[1::2]))
    assert torch.allclose(loss, -F.logsigmoid(margin).mean(), atol=1e-6)
    assert logs["dpo_loss"] == round(loss.item(), 6) and "sft_loss" not in logs
    loss.backward()
    assert grads_only_on_lora(model)
    with model.disable_adapter():  # policy = reference: the loss is log 2 exactly
        same = objective.loss(model, batch, Reference(None), step=0)[0]
    assert abs(same.item() - torch.log(torch.tensor(2.0)).item()) < 1e-6


def test_retain_kl_is_zero_at_the_base_and_reaches_only_the_patch(lora_model):
    model, _, _ = lora_model
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [2, 9, 10, 11]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])}
    kl = kl_to_reference(model, Reference(None), batch)
    patched = F.log_softmax(model(**batch).logits, -1)
    with torch.no_grad(), model.disable_adapter():
        base = F.log_softmax(model(**batch).logits, -1)
    manual = (base.exp() * (base - patched)).sum(-1)[batch["attention_mask"].bool()].mean()
    assert kl.item() > 0 and torch.allclose(kl, manual, atol=1e-6)
    objective = RetainKL([batch], weight=3.0)
    value, logs = objective.loss(model, {"input_ids": batch["input_ids"]}, Reference(None), step=5)
    assert torch.allclose(value, kl) and "retain_kl" in logs  # step 5 wraps round the one retain batch
    value.backward()
    assert grads_only_on_lora(model)
    with model.disable_adapter():
        assert kl_to_reference(model, Reference(None), batch).abs().item() < 1e-6


def test_ortho_penalty_is_the_update_energy_in_w0s_top_subspaces(lora_model):
    model, _, info = lora_model
    modules = ortho_modules(model, 3, info.fingerprint)
    penalty = ortho_penalty(modules)
    manual = sum(m.scaling**2 * (((m.B @ m.A) @ m.V).square().sum() + (m.U.T @ (m.B @ m.A)).square().sum())
                 for m in modules)
    assert torch.allclose(penalty, manual, rtol=1e-5)
    penalty.backward()
    assert grads_only_on_lora(model)
    project_out(modules)
    assert max(float((m.A @ m.V).abs().max()) for m in modules) < 1e-5
    assert Orthogonality(modules, 0.0, True).loss(model, {}, None, step=0) is None  # projection only: no term


def test_step_loss_adds_further_terms_times_their_weight(lora_model):
    model, _, _ = lora_model
    batch = batch_of([[5, 6, 7, 8]], labelled_from=2)
    retain = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    total, row = step_loss([SFT(), RetainKL([retain], weight=4.0)], model, batch, Reference(None), 0)
    alone = SFT().loss(model, batch, None, step=0)[0] + 4.0 * kl_to_reference(model, Reference(None), retain)
    assert torch.allclose(total, alone, atol=1e-6) and {"sft_loss", "retain_kl"} <= set(row)


def test_objectives_are_built_only_where_the_config_switches_them_on(lora_model):
    from orthopatch.train.objectives import TrainContext, build_objectives

    model, tokenizer, info = lora_model
    names = lambda cfg: [o.name for o in build_objectives(TrainContext(cfg, model, tokenizer, info.fingerprint, {}))]  # noqa: E731
    assert names(make(TrainConfig)) == ["sft"]
    assert names(make(TrainConfig, method="lora-dpo", ortho={"weight": 1.0, "k": 2})) == ["dpo", "ortho"]
    provenance: dict = {}
    cfg = make(TrainConfig, retain={"data": ["trivia"], "weight": 2.0})
    built = build_objectives(TrainContext(cfg, model, tokenizer, info.fingerprint, provenance))
    assert [o.name for o in built] == ["sft", "retain"] and provenance["retain"]["weight"] == 2.0


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharding_gives_each_process_a_contiguous_slice_of_every_batch(world):
    batch = list(range(10, 18))
    shares = [local_share(batch, SimpleNamespace(num_processes=world, process_index=rank)) for rank in range(world)]
    assert [i for share in shares for i in share] == batch  # disjoint, in order, nothing lost
    small = [5, 6]
    if world > len(small):
        assert all(local_share(small, SimpleNamespace(num_processes=world, process_index=r)) == small
                   for r in range(world))


def test_epoch_batches_are_a_seeded_permutation():
    first = epoch_batches(10, 4, seed=3, epoch=0)
    assert first == epoch_batches(10, 4, seed=3, epoch=0) != epoch_batches(10, 4, seed=3, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(10)) and [len(b) for b in first] == [4, 4, 2]


def test_collate_right_pads_and_interleaves_preference_pairs():
    a = TokenizedExample("a", [1, 2, 3], [-100, 2, 3])
    b = TokenizedExample("b", [4, 5], [-100, 5])
    padded = collate([a, b], pad_id=0)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert padded["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    pairs = collate([PreferencePair("p", a, b), PreferencePair("q", b, a)], pad_id=0)
    assert pairs["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0], [4, 5, 0], [1, 2, 3]]


def test_length_grouped_batches_pad_less_and_still_cover_every_example_once():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 400, (200,), generator=generator).tolist()
    plain = epoch_batches(200, 8, seed=1, epoch=0)
    grouped = epoch_batches(200, 8, seed=1, epoch=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(200))
    assert grouped == epoch_batches(200, 8, seed=1, epoch=0, lengths=lengths)  # seeded: a resume sees the same

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.3 * padding(plain)
