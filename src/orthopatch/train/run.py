"""``orthopatch train``: a LoRA safety patch (``lora-sft``) or, as the paper's baselines, every parameter
(``full-sft``), and DPO on refusal pairs (``lora-dpo``, ``full-dpo``), with optional retain and orthogonality terms.
The whole run reads top to bottom in :func:`train_patch`; its parts are the components of this package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from orthopatch.config import to_dict, validate
from orthopatch.data.assemble import augment_with_templates, training_records
from orthopatch.data.gate_data import GateData, gate_data
from orthopatch.data.refusals import REFUSALS_VERSION
from orthopatch.data.schema import Record
from orthopatch.faults import fault_point
from orthopatch.io import (
    atomic_dir,
    check_new_output,
    output_lock,
    sha256_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from orthopatch.models.loading import ModelInfo, load_model_for
from orthopatch.patches.gate import Gate, gate_summary
from orthopatch.patches.manifest import MANIFEST, build_manifest
from orthopatch.train import checkpoint
from orthopatch.train.adapters import bake_scale, save_weights, trainable_model
from orthopatch.train.config import TrainConfig
from orthopatch.train.data import TrainingSet, training_set
from orthopatch.train.gate import check_features, fit_gate
from orthopatch.train.loop import LoopResult, run_loop
from orthopatch.train.objectives import TrainContext, build_objectives
from orthopatch.train.reference import Reference


def train_patch(cfg: TrainConfig, *, overwrite: bool = False, progress: bool = True, command: str | None = None,
                model_and_tokenizer: tuple | None = None, records: tuple[list, dict] | None = None) -> Path:
    """Train as ``cfg`` says (a LoRA patch, or a full fine-tune) and write it atomically to ``cfg.output``.

    ``records`` (records, provenance) replaces ``cfg.data`` for callers that build the data in memory (red-team
    rounds: the prompts a model complied with never touch the disk). Returns the output path. A rerun after an
    interruption resumes from the last checkpoint of the same run.
    """
    validate(cfg)
    output = check_new_output(cfg.output, overwrite)
    with output_lock(output):
        set_seed(cfg.seed, deterministic=False)
        checkpoints = checkpoint.checkpoint_root(output)
        records, provenance = safety_records(cfg, records)  # a bad file fails before a large model loads
        gate_prompts = gate_data(cfg.gate, cfg.seed, cfg.split_seed) if cfg.gate.enabled else None
        if cfg.gate.enabled:
            check_features(cfg.gate)  # a guard or encoder directory that is not one fails before training
        model, tokenizer, info = load_model_for(cfg, model_and_tokenizer)
        data = training_set(cfg, model, tokenizer, records, provenance, checkpoints, progress)
        fault_point("data")
        trainable = trainable_model(cfg, model, info.fingerprint, shared=model_and_tokenizer is not None)
        objectives = build_objectives(TrainContext(cfg, trainable, tokenizer, info.fingerprint, data.provenance))
        n_trainable = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
        reference = Reference.for_training(trainable, cfg.is_lora) \
            if any(o.needs_reference for o in objectives) else None
        result = run_loop(trainable, data.examples, objectives, reference, cfg, pad_id=tokenizer.pad_token_id,
                          key=run_key(cfg, info, data.provenance), checkpoints=checkpoints, overwrite=overwrite,
                          progress_bar=progress)
        counts = result.accelerator.reduce(torch.tensor([result.progress.tokens, result.progress.label_tokens],
                                                        device=result.accelerator.device), reduction="sum")
        if result.accelerator.is_main_process:  # every process trained on its share of each batch
            gate = fitted_gate(cfg, result.model, tokenizer, gate_prompts, progress)
            cost = run_cost(cfg, result, data, n_trainable, int(counts[0]), int(counts[1]), gate)
            save_patch(cfg, result, tokenizer, info, data, cost, output, gate, overwrite=overwrite, command=command)
            checkpoint.discard(checkpoints)
        result.accelerator.wait_for_everyone()
    if cfg.is_lora:  # the caller's base model must stay usable (the demo evaluates with it)
        result.model.unload()
    return output


def safety_records(cfg: TrainConfig, given: tuple[list, dict] | None) -> tuple[list[Record], dict[str, Any]]:
    if given is None:
        records, provenance = training_records(cfg.data, seed=cfg.seed, split_seed=cfg.split_seed,
                                               max_examples=cfg.max_examples, shuffle=cfg.shuffle)
    else:
        records, provenance = list(given[0]), dict(given[1])
    if cfg.augment_templates:
        records, provenance["augmented"] = augment_with_templates(records, cfg.augment_templates, cfg.seed,
                                                                  split_seed=cfg.split_seed)
    return records, provenance


def fitted_gate(cfg: TrainConfig, model, tokenizer, prompts: GateData | None, progress: bool) -> Gate | None:
    """The gate of a selective patch, fitted on the base's hidden states (the trained adapter switched off)."""
    if prompts is None:
        return None
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        gate = fit_gate(model, tokenizer, cfg.gate, prompts, progress, cfg.seed)
    model.train(was_training)
    return gate


def run_key(cfg: TrainConfig, info: ModelInfo, provenance: dict[str, Any]) -> str:
    """What a checkpoint must match to be resumed: the config (bar output and logging), the base and the data."""
    return sha256_json({"config": {k: v for k, v in to_dict(cfg).items() if k not in ("output", "log_every")},
                        "base": info.fingerprint, "data": provenance["records_sha256"]})


def run_cost(cfg: TrainConfig, result: LoopResult, data: TrainingSet, n_trainable: int, tokens: int,
             label_tokens: int, gate: Gate | None = None) -> dict[str, Any]:
    gate_seconds = gate.info["fit_seconds"] if gate is not None else None
    return {"gate_fit_seconds": gate_seconds, "total_seconds": round(result.wall_seconds + (gate_seconds or 0.0), 2),
            "examples": len(data.examples), "epochs": cfg.epochs, "optimizer_steps": result.steps,
            "tokens_trained": tokens, "label_tokens": label_tokens, "wall_seconds": round(result.wall_seconds, 2),
            "resumed_from_batch": result.resumed_from,
            "tokens_per_second": round(tokens / result.wall_seconds, 1) if result.wall_seconds > 0 else None,
            "peak_memory_mb": round(result.peak_memory_mb, 1), "trainable_parameters": n_trainable,
            "device": str(next(result.model.parameters()).device), "processes": result.accelerator.num_processes,
            "packed": result.packed, "mixed_precision": result.mixed_precision,
            "weights_dtype": str(next(result.model.parameters()).dtype).removeprefix("torch.")}


def save_patch(cfg: TrainConfig, result: LoopResult, tokenizer, info: ModelInfo, data: TrainingSet,
               cost: dict[str, Any], output: Path, gate: Gate | None = None, *, overwrite: bool,
               command: str | None) -> None:
    """Write the patch atomically: weights (and gate), the base answers it used, the loss log and the manifest
    (hashes last)."""
    if cfg.is_lora and cfg.scale != 1.0:
        bake_scale(result.model, cfg.scale)
    kind = "gated-lora" if gate is not None else "lora" if cfg.is_lora else "full"
    with atomic_dir(output, overwrite=overwrite) as tmp:
        save_weights(result.model, tokenizer, tmp, cfg.is_lora)
        if gate is not None:
            gate.save(tmp)
        fault_point("save")
        for name, rows in data.side_files.items():
            write_jsonl_atomic(tmp / name, rows)
        write_jsonl_atomic(tmp / "train_log.jsonl", result.progress.log)
        extra = {"gate": gate_summary(gate)} if gate is not None else {}
        manifest = build_manifest(tmp, kind=kind, method=cfg.method, **extra,
                                  base=info.to_dict(), config=to_dict(cfg),
                                  data={**data.provenance, "refusals": REFUSALS_VERSION}, seed=cfg.seed,
                                  command=command, cost=cost,
                                  final_loss=result.progress.log[-1]["loss"] if result.progress.log else None)
        write_json_atomic(tmp / MANIFEST, manifest)
