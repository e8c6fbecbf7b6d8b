"""Evaluate a base model, with or without a patch: safety, over-refusal and general capability.

Writes ``results.json`` (metrics with n, CI, judge, decoding and data hashes) and ``samples.jsonl`` (one row per
judged item, so a run can be re-judged without generating again). Harmful prompts are stored only as ids and hashes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orthopatch.config import EvalConfig, to_dict
from orthopatch.data.registry import load_dataset, records_hash
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError
from orthopatch.evaluate.generation import generate
from orthopatch.evaluate.judges import get_judge
from orthopatch.evaluate.metrics import answer_matches, kl_to_base, perplexity, rate
from orthopatch.io import atomic_dir, sha256_text, write_json_atomic, write_jsonl_atomic
from orthopatch.patches.manifest import library_versions

RESULTS = "results.json"
SAMPLES = "samples.jsonl"


def _records(name: str, cfg: EvalConfig, limit: int | None, kinds: tuple[str, ...]):
    dataset = load_dataset(name)
    if dataset.spec.kind not in kinds:
        raise UserError(f"dataset {name!r} is of kind {dataset.spec.kind!r}, expected {' or '.join(kinds)}")
    records = get_split(dataset, cfg.split, cfg.split_seed, limit)
    source = {**dataset.source, "split": cfg.split, "n_used": len(records), "used_sha256": records_hash(records)}
    return dataset, records, source


def _sample_row(set_name: str, record, harmful: bool, response: str, **judged: Any) -> dict[str, Any]:
    row = {"set": set_name, "id": record.id, "prompt_sha256": sha256_text(record.prompt)}
    if not harmful:
        row["prompt"] = record.prompt
    return {**row, "response": response, **judged}


def evaluate(model, tokenizer, cfg: EvalConfig, *, progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """Run every configured metric on ``model`` (a plain model or a PeftModel); return results and samples."""
    judge = get_judge(cfg.judge)
    metrics: dict[str, Any] = {"harmful_refusal": {}, "attack_success_rate": {}, "over_refusal": {}}
    data: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    gen = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "progress": progress}

    def refusal_set(name: str, limit: int | None, harmful: bool) -> list[bool]:
        dataset, records, source = _records(name, cfg, limit, ("prompts",))
        if dataset.spec.harmful != harmful:
            raise UserError(f"dataset {name!r} is {'' if dataset.spec.harmful else 'not '}harmful; list it under "
                            f"{'harmful' if dataset.spec.harmful else 'benign'}")
        data[name] = source
        responses = generate(model, tokenizer, [r.prompt for r in records], desc=name, **gen)
        flags = [judge.is_refusal(text) for text in responses]
        samples.extend(_sample_row(name, r, harmful, text, refused=flag) for r, text, flag in
                       zip(records, responses, flags, strict=True))
        return flags

    for name in cfg.harmful:
        flags = refusal_set(name, cfg.n_harmful, harmful=True)
        metrics["harmful_refusal"][name] = rate(flags)
        metrics["attack_success_rate"][name] = rate([not f for f in flags])
    all_benign: list[bool] = []
    for name in cfg.benign:
        flags = refusal_set(name, cfg.n_benign, harmful=False)
        metrics["over_refusal"][name] = rate(flags)
        all_benign += flags
    if cfg.benign:
        metrics["over_refusal"]["all"] = rate(all_benign)
    if cfg.trivia:
        _, records, data[cfg.trivia] = _records(cfg.trivia, cfg, cfg.n_trivia, ("qa",))
        responses = generate(model, tokenizer, [r.prompt for r in records], desc=cfg.trivia,
                             **{**gen, "max_new_tokens": cfg.trivia_max_new_tokens})
        correct = [answer_matches(text, r.reference) for r, text in zip(records, responses, strict=True)]
        samples.extend(_sample_row(cfg.trivia, r, False, text, reference=r.reference, correct=ok)
                       for r, text, ok in zip(records, responses, correct, strict=True))
        metrics["trivia_accuracy"] = rate(correct)
    if cfg.perplexity:
        _, records, data[cfg.perplexity] = _records(cfg.perplexity, cfg, cfg.n_perplexity, ("text",))
        metrics["perplexity"] = perplexity(model, tokenizer, [r.prompt for r in records])
    if cfg.kl:
        prompts = []
        for name in cfg.kl:
            dataset, records, source = _records(name, cfg, cfg.n_kl, ("prompts", "qa"))
            if dataset.spec.harmful:
                raise UserError(f"KL to base is measured on benign prompts; {name!r} is harmful", field="kl")
            data.setdefault(name, source)
            prompts += [r.prompt for r in records]
        metrics["kl_to_base"] = kl_to_base(model, tokenizer, prompts)
    return {"metrics": metrics, "data": data, "judge": judge.describe(),
            "decoding": {"strategy": "greedy", "max_new_tokens": cfg.max_new_tokens,
                         "trivia_max_new_tokens": cfg.trivia_max_new_tokens, "chat_template": True}}, samples


def load_for_eval(cfg: EvalConfig, model_and_tokenizer: tuple | None = None):
    """The model to evaluate: the base, with the patch attached (verified) when ``cfg.patch`` is set."""
    from orthopatch.models.loading import load_model_for
    from orthopatch.patches.manifest import apply_patch

    model, tokenizer, info = load_model_for(cfg, model_and_tokenizer)
    patch_info = None
    if cfg.patch:
        model, manifest = apply_patch(model, cfg.patch, info.fingerprint,
                                      allow_base_mismatch=cfg.allow_base_mismatch)
        if cfg.patch_scale != 1.0:
            from orthopatch.patches.scale import set_patch_scale

            set_patch_scale(model, cfg.patch_scale)
        patch_info = {"path": str(cfg.patch), "files": manifest["files"], "base": manifest["base"]["fingerprint"],
                      "scale": cfg.patch_scale,
                      "base_mismatch_allowed": cfg.allow_base_mismatch
                      and manifest["base"]["fingerprint"] != info.fingerprint}
    return model, tokenizer, info, patch_info


def run_eval(cfg: EvalConfig, *, overwrite: bool = False, progress: bool = True, command: str | None = None,
             model_and_tokenizer: tuple | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate as ``cfg`` says and write results atomically to ``cfg.output``."""
    from orthopatch.io import check_new_output

    output = check_new_output(cfg.output, overwrite)
    start = time.perf_counter()
    model, tokenizer, info, patch_info = load_for_eval(cfg, model_and_tokenizer)
    results, samples = evaluate(model, tokenizer, cfg, progress=progress)
    if patch_info is not None and model_and_tokenizer is not None:
        model.unload()  # leave the caller's base model as it was given
    record = {"format": "orthopatch-eval/1", "model": info.to_dict(), "patch": patch_info, **results,
              "config": to_dict(cfg), "command": command, "libraries": library_versions(),
              "wall_seconds": round(time.perf_counter() - start, 2)}
    with atomic_dir(output, overwrite=overwrite) as tmp:
        write_jsonl_atomic(tmp / SAMPLES, samples)
        write_json_atomic(tmp / RESULTS, record)
    return output, record
