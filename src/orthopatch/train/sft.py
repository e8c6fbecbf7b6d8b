"""Safety training recipe: a LoRA safety patch (``lora-sft``) or, as the paper's baselines, every parameter
(``full-sft``), and DPO on refusal pairs with LoRA or every parameter (``lora-dpo``, ``full-dpo``). The whole run
reads top to bottom in :func:`train_patch`.

A plain PyTorch loop under :mod:`accelerate` rather than TRL's SFTTrainer / DPOTrainer: on the 2-core reference
machine the plain loop ran 1.2-1.4x faster on identical SFT work (PROBES.md); the assistant-only mask is built and
checked here anyway; one loop gives every method the same resumable checkpoints, fault injection, seeded data order
and cost record; and ``accelerate launch`` still scales it out (DDP / DeepSpeed / FSDP) without changes. The DPO
objective is the standard sigmoid loss of Rafailov et al. (TRL's ``loss_type="sigmoid"``) on summed log-probabilities
of the assistant tokens, with the frozen base as the reference model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orthopatch.config import METHODS, TrainConfig, to_dict
from orthopatch.data.assemble import training_records
from orthopatch.data.refusals import REFUSALS_VERSION
from orthopatch.errors import UserError
from orthopatch.io import (
    atomic_dir,
    check_new_output,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from orthopatch.models.loading import load_model_for
from orthopatch.patches.manifest import MANIFEST, build_manifest
from orthopatch.train import checkpoint
from orthopatch.train.tokenize import TokenizedExample, pad_batch, tokenize_chat


def linear_module_names(model) -> list[str]:
    """The distinct leaf names of the model's linear layers, output head excluded (what PEFT's "all-linear" means)."""
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear | Conv1D) and module is not output})


def lora_config(cfg: TrainConfig, model=None):
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    if cfg.lora.layers is not None and isinstance(targets, str) and model is not None:
        targets = linear_module_names(model)  # PEFT takes a layer subset only with a list of module names
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        layers_to_transform=cfg.lora.layers,
        task_type="CAUSAL_LM",
    )


def retain_batches(cfg: TrainConfig, tokenizer, provenance: dict) -> list[dict[str, torch.Tensor]]:
    """Fixed, seeded batches of chat-formatted benign prompts for the retain term ([] when it is off)."""
    if not cfg.retain or cfg.retain_weight <= 0:
        return []
    from orthopatch.data.registry import load_dataset
    from orthopatch.data.splits import get_split
    from orthopatch.evaluate.generation import chat_prompt_ids

    prompts, sources = [], []
    for name in cfg.retain:
        dataset = load_dataset(name)
        if dataset.spec.harmful or dataset.spec.kind not in ("prompts", "qa"):
            raise UserError(f"retain data must be benign prompts; {name!r} is not", field="retain")
        records = get_split(dataset, "train", cfg.split_seed)
        prompts += [r.prompt for r in records]
        sources.append({**dataset.source, "split": "train", "n_split": len(records)})
    provenance["retain"] = {"sources": sources, "weight": cfg.retain_weight}
    ids = chat_prompt_ids(tokenizer, prompts)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(cfg.seed + 7)).tolist()
    batches = []
    for start in range(0, len(order), cfg.retain_batch_size):
        rows = [TokenizedExample(str(i), ids[i][: cfg.max_length], ids[i][: cfg.max_length])
                for i in order[start:start + cfg.retain_batch_size]]
        padded = pad_batch(rows, tokenizer.pad_token_id)
        batches.append({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    return batches


def retain_kl(model, frozen_base, batch: dict[str, torch.Tensor], accelerator) -> torch.Tensor:
    """Mean over prompt tokens of KL(base || patched) of the next-token distribution."""
    import torch.nn.functional as F

    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    patched = F.log_softmax(model(**batch).logits.float(), dim=-1)
    with torch.no_grad():
        if frozen_base is not None:
            base_logits = frozen_base(**batch).logits
        else:
            with accelerator.unwrap_model(model).disable_adapter():
                base_logits = model(**batch).logits
        base = F.log_softmax(base_logits.float(), dim=-1)
    per_token = (base.exp() * (base - patched)).sum(-1)
    mask = batch["attention_mask"].bool()
    return per_token[mask].mean()


# Base-model answers cached next to the run and kept in the output; not part of the patch's hashed files.
REJECTED = "dpo_rejected.jsonl"
GENERAL = "general_answers.jsonl"


@dataclass(frozen=True)
class PreferencePair:
    id: str
    chosen: TokenizedExample
    rejected: TokenizedExample


def collate(batch: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of examples; a batch of preference pairs becomes rows chosen, rejected, chosen, rejected, ...
    (interleaved, so that splitting a batch across processes keeps each pair together)."""
    if batch and isinstance(batch[0], PreferencePair):
        batch = [row for pair in batch for row in (pair.chosen, pair.rejected)]
    return pad_batch(batch, pad_id)


def base_answers(model, tokenizer, records, max_new_tokens: int, cache: Path, progress: bool,
                 desc: str) -> dict[str, str]:
    """The base model's own greedy answers to ``records``' prompts, generated once and cached at ``cache`` (reused
    by a resumed run). Used as DPO's rejected side (answers to harmful requests: never printed or logged, kept out
    of the patch's hashed files) and as self-distillation targets for general data."""
    from orthopatch.evaluate.generation import generate
    from orthopatch.io import sha256_text

    key = [[r.id, sha256_text(r.prompt)] for r in records]
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        if [[row["id"], row["prompt_sha256"]] for row in rows] == key and rows and \
                rows[0].get("max_new_tokens") == max_new_tokens:
            return {row["id"]: row["response"] for row in rows}
    was_training = model.training
    model.eval()
    answers = generate(model, tokenizer, [r.prompt for r in records], max_new_tokens=max_new_tokens, batch_size=16,
                       progress=progress, desc=desc)
    model.train(was_training)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(cache, [{"id": r.id, "prompt_sha256": sha256_text(r.prompt), "response": text,
                                "max_new_tokens": max_new_tokens} for r, text in zip(records, answers, strict=True)])
    return {r.id: text for r, text in zip(records, answers, strict=True)}


def general_prompts(cfg: TrainConfig, n: int) -> tuple[list, list, list[dict]]:
    """Up to ``n`` general examples: benign prompts of registered sets' train splits (to be answered by the base)
    and user JSONL examples (used as given); returns (prompts to answer, ready examples, sources)."""
    from orthopatch.data.registry import REGISTRY, load_dataset, records_hash
    from orthopatch.data.schema import load_user_jsonl
    from orthopatch.data.splits import get_split

    to_answer, ready, sources = [], [], []
    for item in cfg.general_data:
        if item in REGISTRY:
            dataset = load_dataset(item)
            if dataset.spec.harmful or dataset.spec.kind not in ("prompts", "qa"):
                raise UserError(f"general data must be benign prompts; {item!r} is not", field="general_data")
            records = get_split(dataset, "train", cfg.split_seed)
            to_answer += records
            sources.append({**dataset.source, "split": "train", "n_split": len(records),
                            "targets": "base model greedy answers"})
        else:
            records = load_user_jsonl(item)
            ready += records
            sources.append({"name": item, "n": len(records), "records_sha256": records_hash(records),
                            "targets": "as given"})
    order = torch.randperm(len(to_answer) + len(ready), generator=torch.Generator().manual_seed(cfg.seed + 11))
    picked = set(order.tolist()[:n])  # a seeded sample, kept in a stable order
    return ([r for i, r in enumerate(to_answer) if i in picked],
            [r for i, r in enumerate(ready, start=len(to_answer)) if i in picked], sources)


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's labelled (assistant) tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(model, frozen_base, batch: dict[str, torch.Tensor], beta: float, accelerator):
    """Sigmoid DPO loss on a batch of interleaved (chosen, rejected) rows; the reference is the base (the adapter
    switched off, or a frozen copy for full-parameter DPO)."""
    import torch.nn.functional as F

    policy = sequence_logprobs(model, batch)
    with torch.no_grad():
        if frozen_base is not None:
            reference = sequence_logprobs(frozen_base, batch)
        else:
            with accelerator.unwrap_model(model).disable_adapter():
                reference = sequence_logprobs(model, batch)
    chosen, rejected = policy[0::2] - reference[0::2], policy[1::2] - reference[1::2]
    margin = beta * (chosen - rejected)
    stats = margin.detach()
    return -F.logsigmoid(margin).mean(), {"reward_margin": round(float(stats.mean()) / beta, 6),
                                          "reward_accuracy": round(float((stats > 0).float().mean()), 4)}


@dataclass
class OrthoModule:
    A: torch.nn.Parameter  # (r, in)
    B: torch.nn.Parameter  # (out, r)
    scaling: float
    V: torch.Tensor  # W0's top-k right singular vectors (in, k)
    U: torch.Tensor  # W0's top-k left singular vectors (out, k)


def ortho_modules(peft_model, k: int, base_fingerprint: str) -> list[OrthoModule]:
    """For every LoRA layer: its factors and W0's top-k singular subspaces (cached per base fingerprint, the same
    cache the geometry analysis uses), for the orthogonality lever."""
    from peft.tuners.lora import LoraLayer

    from orthopatch.analysis.run import cached_top_singular

    out = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        W0 = module.get_base_layer().weight.detach().double()
        if getattr(module, "fan_in_fan_out", False):  # GPT-2 Conv1D stores (in, out)
            W0 = W0.T
        key = name.split("base_model.model.", 1)[-1]
        factors = cached_top_singular(base_fingerprint, key, W0, min(k, *W0.shape))
        A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
        out.append(OrthoModule(A, B, float(module.scaling["default"]), factors.V.to(A.dtype), factors.U.to(A.dtype)))
    return out


def ortho_penalty(modules: list[OrthoModule]) -> torch.Tensor:
    """Energy of ΔW = s·B·A inside W0's top-k singular subspaces, input and output side:
    Σ s²(‖B·(A·V_k)‖²_F + ‖(U_kᵀ·B)·A‖²_F), computed from the factors (ΔW is never formed)."""
    total = modules[0].A.new_zeros(())
    for m in modules:
        total = total + m.scaling**2 * ((m.B @ (m.A @ m.V)).square().sum() + ((m.U.T @ m.B) @ m.A).square().sum())
    return total


@torch.no_grad()
def project_out(modules: list[OrthoModule]) -> None:
    """Keep every A's rows in the complement of W0's top-k right singular subspace: ΔW then ignores W0's principal
    input directions exactly (ΔW·V_k = 0)."""
    for m in modules:
        m.A -= (m.A @ m.V) @ m.V.T


def local_share(indices: list[int], accelerator) -> list[int]:
    """This process's contiguous share of a batch. Under ``accelerate launch`` every process takes a slice of the
    same global batch (DDP averages their gradients), so the optimisation (global batch, steps, schedule) is the
    same whatever the number of processes. accelerate's own batch splitting needs a sized BatchSampler, and
    the seeded per-epoch batches here are a plain list (it falls back to handing out whole batches in turn)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if len(indices) < world:  # a last batch smaller than the world: every process takes all of it
        return indices
    return indices[rank * len(indices) // world:(rank + 1) * len(indices) // world]


def reset_peak_memory(device: str) -> None:
    """Start a fresh high-water mark, so that a run's peak is its own and not that of an earlier run in the same
    process (a sweep, the demo). On Linux, writing 5 to /proc/self/clear_refs resets VmHWM."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    # elsewhere the process-wide peak (ru_maxrss) is reported; it can include earlier work
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_patch(cfg: TrainConfig, *, overwrite: bool = False, progress: bool = True, command: str | None = None,
                model_and_tokenizer: tuple | None = None, records: tuple[list, dict] | None = None) -> Path:
    """Train as ``cfg`` says (a LoRA patch, or a full fine-tune) and write it atomically to ``cfg.output``.

    ``records`` (records, provenance) replaces ``cfg.data`` for callers that build the data in memory (red-team
    rounds: the prompts a model complied with never touch the disk). Returns the output path. A rerun after an
    interruption resumes from the last checkpoint of the same run.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import get_peft_model
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r} (available: {', '.join(METHODS)})", field="method")
    output = check_new_output(cfg.output, overwrite)
    set_seed(cfg.seed, deterministic=False)
    lora, dpo = cfg.method.startswith("lora-"), cfg.method.endswith("-dpo")
    ckpt_root = checkpoint.checkpoint_root(output)

    # 1. Data (validated first: a bad file should fail before a large model is loaded), then the base model.
    if records is None:
        records, provenance = training_records(cfg.data, seed=cfg.seed, split_seed=cfg.split_seed,
                                               max_examples=cfg.max_examples)
    else:
        records, provenance = list(records[0]), dict(records[1])
    if cfg.augment_templates:
        from orthopatch.data.assemble import augment_with_templates

        records, provenance["augmented"] = augment_with_templates(records, cfg.augment_templates, cfg.seed,
                                                                  split_seed=cfg.split_seed)
    if cfg.scale != 1.0 and not (lora and cfg.scale > 0):
        raise UserError("scale bakes a positive dose into a LoRA patch; it needs a lora-* method", field="scale")
    if cfg.init_patch and not lora:
        raise UserError("init_patch continues a LoRA patch; it needs a lora-* method", field="init_patch")
    if cfg.mix_general and (dpo or not 0 < cfg.mix_general < 1):
        raise UserError("mix_general is the general share of an SFT training set: a number in (0, 1), with an "
                        "*-sft method", field="mix_general")
    model, tokenizer, info = load_model_for(cfg, model_and_tokenizer)
    general_answers: dict[str, str] = {}
    if cfg.mix_general:  # safety + general data at the stated ratio (general targets: the base's own answers)
        from orthopatch.data.schema import Record

        wanted = round(len(records) * cfg.mix_general / (1 - cfg.mix_general))
        to_answer, ready, sources = general_prompts(cfg, wanted)
        general_answers = base_answers(model, tokenizer, to_answer, cfg.general_max_new_tokens,
                                       ckpt_root / GENERAL, progress, "general answers (base)")
        general = [Record(id=r.id, prompt=r.prompt, response=general_answers[r.id], meta={"target": "base answer"})
                   for r in to_answer if general_answers[r.id].strip()] + ready
        provenance["mix"] = {"general_share": cfg.mix_general, "wanted": wanted, "n_general": len(general),
                             "n_safety": len(records), "skipped_empty_answers": len(to_answer) + len(ready)
                             - len(general), "sources": sources, "answers_max_new_tokens": cfg.general_max_new_tokens,
                             "answers_sha256": sha256_file(ckpt_root / GENERAL) if to_answer else None}
        records = records + general
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    examples: list[TokenizedExample] = [
        tokenize_chat(tokenizer, r.chat(), cfg.max_length, r.id, context,
                      (r.meta["source"], r.meta["line"]) if "line" in r.meta else None)
        for r in records
    ]
    rejected_cache = ckpt_root / REJECTED
    if dpo:  # pairs: (prompt, refusal target) over (prompt, the base's own answer)
        answers = base_answers(model, tokenizer, records, cfg.dpo_rejected_tokens, rejected_cache, progress,
                               "rejected answers (base)")
        pairs = []
        for record, chosen in zip(records, examples, strict=True):
            if not answers[record.id].strip():  # the base already said nothing: no preference to learn
                continue
            chat = [*record.chat()[:-1], {"role": "assistant", "content": answers[record.id]}]
            pairs.append(PreferencePair(record.id, chosen,
                                        tokenize_chat(tokenizer, chat, cfg.max_length, record.id, context)))
        provenance["dpo"] = {"beta": cfg.dpo_beta, "rejected": "base model greedy answers",
                             "rejected_max_new_tokens": cfg.dpo_rejected_tokens, "pairs": len(pairs),
                             "skipped_empty_rejected": len(examples) - len(pairs),
                             "rejected_sha256": sha256_file(rejected_cache)}
        if not pairs:
            raise UserError("no preference pairs: the base gave an empty answer to every training prompt")
        examples = pairs

    # 2. The patch: LoRA adapters on a frozen base; or, for full-sft, every weight of a copy of the base.
    if lora and cfg.init_patch:  # continue training an existing patch (verified against this base)
        from peft import PeftModel

        from orthopatch.patches.manifest import verify_patch

        verify_patch(cfg.init_patch, info.fingerprint)
        peft_model = PeftModel.from_pretrained(model, cfg.init_patch, is_trainable=True)
    elif lora:
        peft_model = get_peft_model(model, lora_config(cfg, model))
    else:
        peft_model = copy.deepcopy(model) if model_and_tokenizer is not None else model
        peft_model.requires_grad_(True)
    ortho: list[OrthoModule] = []
    if (cfg.ortho_weight > 0 or cfg.ortho_project) and not lora:
        raise UserError("the orthogonality lever acts on LoRA factors; it needs a lora-* method", field="ortho_weight")
    if cfg.ortho_weight > 0 or cfg.ortho_project:
        ortho = ortho_modules(peft_model, cfg.ortho_k, info.fingerprint)
        if cfg.ortho_project:
            project_out(ortho)
        provenance["orthogonality"] = {"k": cfg.ortho_k, "penalty_weight": cfg.ortho_weight,
                                       "project_input_side": cfg.ortho_project, "modules": len(ortho)}
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    retain = retain_batches(cfg, tokenizer, provenance)
    frozen_base = None
    if (retain or dpo) and not lora:  # the teacher / reference must stay the base while every weight trains
        frozen_base = copy.deepcopy(peft_model).requires_grad_(False).eval()

    # 3. Loop. The data order of each epoch is a seeded permutation, so a resumed run sees the same batches.
    accelerator = Accelerator(cpu=str(model.device) == "cpu", gradient_accumulation_steps=cfg.grad_accum)
    batches_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    peft_model, optimizer, scheduler = accelerator.prepare(peft_model, optimizer, scheduler)
    key = sha256_json({"config": {k: v for k, v in to_dict(cfg).items() if k not in ("output", "log_every")},
                       "base": info.fingerprint, "data": provenance["records_sha256"]})
    resumed = checkpoint.load(ckpt_root, key, overwrite)
    done, log, tokens, label_tokens, elapsed = 0, [], 0, 0, 0.0
    if resumed is not None:
        state, tensors = resumed
        checkpoint.restore(state, tensors, model=peft_model, optimizer=optimizer, scheduler=scheduler)
        done, log = state["batches_done"], state["log"]
        tokens, label_tokens, elapsed = state["tokens"], state["label_tokens"], state["elapsed"]
    # Fault injection for the crash-safety tests: "N" or "N:SIGNAME" kills this process after batch N.
    fault = os.environ.get("ORTHOPATCH_FAULT_AFTER_STEPS", "0").split(":")
    fault_after, fault_signal = int(fault[0]), getattr(signal, fault[1] if len(fault) > 1 else "SIGKILL")
    peft_model.train()
    reset_peak_memory(str(model.device))
    start = time.perf_counter()
    total_batches = cfg.epochs * batches_per_epoch
    bar = tqdm(total=total_batches, initial=done, desc="train", disable=not progress,
               file=sys.stderr)
    for epoch in range(done // batches_per_epoch, cfg.epochs):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        batches = [order[i:i + cfg.batch_size].tolist() for i in range(0, len(examples), cfg.batch_size)]
        skip = max(done - epoch * batches_per_epoch, 0)  # batches of this epoch a resumed run already did
        for step, indices in enumerate(batches[skip:], start=skip):
            batch = {k: v.to(accelerator.device) for k, v in collate(
                [examples[i] for i in local_share(indices, accelerator)], tokenizer.pad_token_id).items()}
            with accelerator.accumulate(peft_model):
                row: dict[str, Any] = {}
                if dpo:
                    loss, row = dpo_loss(peft_model, frozen_base, batch, cfg.dpo_beta, accelerator)
                else:
                    loss = peft_model(**batch).loss
                if retain:
                    kl = retain_kl(peft_model, frozen_base, retain[done % len(retain)], accelerator)
                    row["sft_loss"] = round(loss.item(), 6)
                    row["retain_kl"] = round(kl.item(), 6)
                    loss = loss + cfg.retain_weight * kl
                if ortho and cfg.ortho_weight > 0:
                    penalty = ortho_penalty(ortho)
                    row["ortho_energy"] = round(penalty.item(), 8)
                    loss = loss + cfg.ortho_weight * penalty
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                if ortho and cfg.ortho_project:
                    project_out(ortho)
                scheduler.step()
                optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            label_tokens += int((batch["labels"] != -100).sum())
            log.append({"epoch": epoch, "step": step, "loss": round(loss.item(), 6), **row,
                        "lr": scheduler.get_last_lr()[0]})
            done += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_batches \
                    and accelerator.sync_gradients and accelerator.is_main_process:
                checkpoint.save(ckpt_root, done, key=key, model=peft_model, optimizer=optimizer, scheduler=scheduler,
                                progress={"batches_done": done, "log": log, "tokens": tokens,
                                          "label_tokens": label_tokens,
                                          "elapsed": elapsed + time.perf_counter() - start})
            if fault_after and done == fault_after:
                os.kill(os.getpid(), fault_signal)
    bar.close()
    wall = elapsed + time.perf_counter() - start
    if not all(math.isfinite(row["loss"]) for row in log):
        raise RuntimeError("training diverged (non-finite loss); nothing was written")

    # 4. Save atomically (the main process only): the PEFT adapter, the loss log, and the manifest (hashes last).
    unwrapped = accelerator.unwrap_model(peft_model)
    counts = accelerator.reduce(torch.tensor([tokens, label_tokens], device=accelerator.device), reduction="sum")
    tokens, label_tokens = int(counts[0]), int(counts[1])  # every process trained on its share of each batch
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return output
    if lora and cfg.scale != 1.0:  # bake the dose in: ΔW = s·B·A is linear in B
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            for module in unwrapped.modules():
                if isinstance(module, LoraLayer) and "default" in module.lora_B:
                    module.lora_B["default"].weight.mul_(cfg.scale)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        unwrapped.save_pretrained(str(tmp), safe_serialization=True)
        if not lora:  # a standalone model directory: loadable like any HF model
            tokenizer.save_pretrained(str(tmp))
        if dpo:
            write_jsonl_atomic(tmp / REJECTED, [{"id": r.id, "response": answers[r.id]} for r in records])
        if general_answers:
            write_jsonl_atomic(tmp / GENERAL, [{"id": k, "response": v} for k, v in general_answers.items()])
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log), encoding="utf-8")
        manifest = build_manifest(
            tmp,
            kind="lora" if lora else "full",
            method=cfg.method,
            base=info.to_dict(),
            config=to_dict(cfg),
            data={**provenance, "refusals": REFUSALS_VERSION},
            seed=cfg.seed,
            command=command,
            cost={
                "examples": len(examples),
                "epochs": cfg.epochs,
                "optimizer_steps": steps,
                "tokens_trained": tokens,
                "label_tokens": label_tokens,
                "wall_seconds": round(wall, 2),
                "resumed_from_batch": resumed[0]["batches_done"] if resumed else None,
                "tokens_per_second": round(tokens / wall, 1) if wall > 0 else None,
                "peak_memory_mb": round(peak_memory_mb(str(model.device)), 1),
                "trainable_parameters": n_trainable,
                "device": str(model.device),
                "processes": accelerator.num_processes,
            },
            final_loss=log[-1]["loss"] if log else None,
        )
        write_json_atomic(tmp / MANIFEST, manifest)
    checkpoint.discard(ckpt_root)
    accelerator.wait_for_everyone()
    # The caller's base model must stay usable (the demo evaluates with it): strip the LoRA layers back out.
    if lora:
        unwrapped.unload()
    return output
