"""Re-score a finished evaluation with other judges, without generating again.

The run's ``samples.jsonl`` holds every judged answer; harmful prompts are stored only as hashes, so a judge that
needs the prompts (a guard model) gets them by rebuilding the run's prompt sets from its recorded config and
checking each against the stored hash. Metrics that do not depend on a judge (trivia, perplexity, KL, ...) are
carried over unchanged; the safety metrics are recomputed by the same code that computed them first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.evaluate.judging import get_judge
from orthopatch.evaluate.runner import (
    RESULTS,
    SAMPLES,
    judged_sets,
    prompt_sets,
    safety_metrics,
    score,
)
from orthopatch.io import (
    atomic_dir,
    check_new_output,
    read_json,
    sha256_file,
    sha256_text,
    write_json_atomic,
    write_jsonl_atomic,
)

SAFETY_KEYS = ("harmful_refusal", "attack_success_rate", "jailbreak_asr", "jailbreak_asr_mean", "sensitive_refusal",
               "over_refusal", "judges")


def read_run(run: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = Path(run)
    results_path, samples_path = run / RESULTS, run / SAMPLES
    if not samples_path.is_file():
        raise UserError("not an orthopatch eval run (missing file)", path=samples_path)
    results = read_json(results_path, "not an orthopatch eval run (missing file)")
    if not str(results.get("format", "")).startswith("orthopatch-eval/2"):
        raise UserError(f"unsupported results format {results.get('format')!r} (rejudge needs orthopatch-eval/2)",
                        path=results_path, field="format")
    samples = []
    for number, line in enumerate(samples_path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"invalid JSON ({error.msg})", path=samples_path, line=number) from None
    return results, samples


def _config(results: dict[str, Any]) -> EvalConfig:
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{k: v for k, v in results["config"].items() if k in known})


def _prompts(results: dict[str, Any], samples: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    lookup = {(s.name, r.id): r.prompt for s in prompt_sets(_config(results)) for r in s.records}
    for row in samples:
        key = (row["set"], row["id"])
        if "prompt_sha256" in row and (key not in lookup or sha256_text(lookup[key]) != row["prompt_sha256"]):
            raise UserError(f"sample {row['set']}/{row['id']} no longer matches the data the run recorded (was the "
                            "data package changed?)")
    return lookup


def rejudge(run: str | Path, judge: str, extra_judges: list[str] | None = None, *, output: str | Path | None = None,
            overwrite: bool = False, command: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Re-score ``run`` with ``judge`` (and extra judges: by default the run's own) into a new run directory."""
    run = Path(run)
    results, samples = read_run(run)
    if extra_judges is None:
        extra_judges = [j["name"] for j in results.get("extra_judges", [])]
    primary = get_judge(judge)
    extra = [get_judge(name) for name in extra_judges if name != judge]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in judge)
    output = check_new_output(output or run.parent / f"{run.name}-rejudged-{slug}", overwrite)
    prompts = _prompts(results, samples) if any(j.needs_prompt for j in [primary, *extra]) else None
    score(samples, primary, extra, prompts)
    metrics = {k: v for k, v in results["metrics"].items() if k not in SAFETY_KEYS}
    metrics.update(safety_metrics(samples, judged_sets(results["data"]), [j.describe() for j in extra]))
    record = {**results, "metrics": metrics, "judge": primary.describe(), "extra_judges": [j.describe() for j in extra],
              "rejudged_from": {"run": str(run), "results_sha256": sha256_file(run / RESULTS),
                                "judge": results.get("judge")},
              "command": command}
    with atomic_dir(output, overwrite=overwrite) as tmp:
        write_jsonl_atomic(tmp / SAMPLES, samples)
        write_json_atomic(tmp / RESULTS, record)
    return output, record
