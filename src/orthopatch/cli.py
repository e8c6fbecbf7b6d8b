"""The ``orthopatch`` command line: train, eval, rejudge, judges, analyze, select-scale, patch, sweep, redteam,
levers, compare-domains, reproduce, demo, datasets."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from orthopatch.errors import UserError


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _common(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
    if with_config:
        parser.add_argument("--config", help="YAML config file (see configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one config key, e.g. --set lora.r=16 (repeatable)")
    parser.add_argument("--model", help="HF model id or local directory (default: the embedded SmolLM2-135M)")
    parser.add_argument("--output", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orthopatch", description="LoRA safety patches for Hugging Face causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a safety patch (LoRA refusal-SFT) or a baseline (full SFT, DPO)",
                           description="Train a LoRA patch (a PEFT adapter directory) or, with --method full-*, a "
                                       "full model directory; either way with orthopatch.json (provenance, cost).")
    _common(train)
    train.add_argument("--data", nargs="+", help="registered dataset names or user JSONL files")
    train.add_argument("--method", help="lora-sft (default), full-sft, lora-dpo, full-dpo")
    train.add_argument("--mix", metavar="general=RATIO",
                       help="mix general data into the safety data: its share of the training set, e.g. general=0.5")
    train.add_argument("--preset", help="a named recipe under --config and --set (see TRAIN_PRESETS in "
                                        "orthopatch.config): small-model")

    ev = sub.add_parser("eval", help="evaluate a model, optionally with a patch",
                        description="Evaluate safety, over-refusal and general capability; writes results.json and "
                                    "samples.jsonl.")
    _common(ev)
    ev.add_argument("--patch", help="patch directory to attach (verified against its manifest and base)")
    ev.add_argument("--allow-base-mismatch", action="store_true",
                    help="apply a patch made for another base (recorded in the results)")
    ev.add_argument("--judge", help="primary refusal judge (see `orthopatch judges`)")
    ev.add_argument("--extra-judges", nargs="+", metavar="JUDGE",
                    help="more judges run on the same answers; their disagreement with the primary is reported")
    ev.add_argument("--attacks", nargs="+", metavar="FAMILY",
                    help="jailbreak families (names, or .yaml/.jsonl files of templates); 'none' for none")
    ev.add_argument("--lm-eval", nargs="+", metavar="TASK", help="lm-evaluation-harness tasks to run as well "
                    "(built-in local task: orthopatch_fact_pairs)")
    ev.add_argument("--lm-eval-include", metavar="DIR", help="a directory of lm-eval task YAMLs")

    rj = sub.add_parser("rejudge", help="re-score an eval run with another judge, without generating again",
                        description="Re-judge the answers stored in RUN/samples.jsonl; writes a new run directory "
                                    "(default: RUN-rejudged-JUDGE) with results.json and samples.jsonl.")
    rj.add_argument("run", help="an eval run directory")
    rj.add_argument("--judge", required=True, help="the new primary refusal judge")
    rj.add_argument("--extra-judges", nargs="*", metavar="JUDGE", help="default: the run's own extra judges")
    rj.add_argument("--output")
    rj.add_argument("--overwrite", action="store_true")
    rj.add_argument("-v", "--verbose", action="store_true")

    jd = sub.add_parser("judges", help="list the judges; --validate measures their agreement with human labels",
                        description="List the judges. With --validate, score each refusal judge on the held-out "
                                    "rows of PyRIT's human-labelled refusal set (accuracy with 95% CI, F1).")
    jd.add_argument("--validate", action="store_true")
    jd.add_argument("--judges", nargs="+", metavar="JUDGE", help="judges to validate (default: every named one)")
    jd.add_argument("--output", help="also write the validation as JSON to this file")
    jd.add_argument("-v", "--verbose", action="store_true")

    demo = sub.add_parser("demo", help="base eval, train a safety patch, patched eval, side-by-side table",
                          description="The whole story on the embedded model in one command.")
    _common(demo, with_config=False)
    demo.add_argument("--quick", action="store_true", help="a smoke-sized run (less data, fewer samples)")

    an = sub.add_parser("analyze", help="geometry of patches / fine-tuned models against their base",
                        description="Orthogonality to W0 (paper's measure, principal angles, projection energy, each "
                                    "with a random baseline), update magnitudes, interference and hidden-state "
                                    "shift; writes geometry.json, geometry.csv and per-layer figures.")
    an.add_argument("targets", nargs="+", help="LoRA patch directories and/or fully fine-tuned model directories")
    an.add_argument("--base", help="the base model (default: the embedded SmolLM2-135M)")
    an.add_argument("--labels", nargs="+", help="one label per target (default: directory names)")
    an.add_argument("--k", dest="ks", nargs="+", type=int, default=[32, 128],
                    help="sizes of W0's top-k subspace to compare with, besides k = r (default: 32 128)")
    an.add_argument("--rank", type=int, default=8, help="ΔW directions compared for a full fine-tuning update")
    an.add_argument("--no-functional", action="store_true", help="skip interference and hidden-state shift")
    an.add_argument("--n-prompts", type=int, default=24, help="prompts per set for the functional measures")
    an.add_argument("--allow-base-mismatch", action="store_true")
    an.add_argument("--output", default="runs/analysis")
    an.add_argument("--overwrite", action="store_true")
    an.add_argument("-v", "--verbose", action="store_true")

    dose = sub.add_parser("select-scale", help="choose a patch's inference scale on validation data",
                          description="Evaluate the patch at several scales on validation splits only and pick the "
                                      "one with the most harmful refusal whose over-refusal stays within the base's "
                                      "+ tolerance.")
    dose.add_argument("patch")
    dose.add_argument("--model", help="the base model (default: the embedded SmolLM2-135M)")
    dose.add_argument("--scales", nargs="+", type=float, default=[0.25, 0.5, 0.75, 1.0])
    dose.add_argument("--tolerance", type=float, default=0.05, help="allowed over-refusal above the base's")
    dose.add_argument("--output", default="runs/dose")
    dose.add_argument("--overwrite", action="store_true")
    dose.add_argument("--quiet", action="store_true")
    dose.add_argument("-v", "--verbose", action="store_true")

    rt = sub.add_parser("redteam", help="lifelong red-teaming: attack, patch what broke, evaluate, repeat",
                        description="Rounds of attack (families held out from earlier rounds) -> patch on the "
                                    "complied prompts -> evaluation on held-out goals (ASR per round, forgetting, "
                                    "over-refusal, general metrics, patch overlap), for each mode: stack, merge, "
                                    "continue, and the full-parameter DPO baseline. Writes redteam.json, rounds.csv, "
                                    "rounds.png.")
    _common(rt)
    rt.add_argument("--rounds", type=int)
    rt.add_argument("--modes", nargs="+", help="stack merge continue full-dpo (default: stack merge full-dpo)")

    sw = sub.add_parser("sweep", help="the paper's comparisons as a resumable grid (method x mix x rank x lr x epochs)",
                        description="Train and evaluate every cell of a grid (or a preset: paper-small); finished "
                                    "cells are never recomputed, so rerunning after an interruption resumes. Writes "
                                    "sweep.json, sweep.csv and figures (trade-off, ratio, rank) with their CSVs.")
    sw.add_argument("--preset", help="paper-small (default), or 'none' to use the grid lists of the config")
    sw.add_argument("--config", help="YAML sweep config")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--model")
    sw.add_argument("--output", default=None)
    sw.add_argument("-v", "--verbose", action="store_true")

    cd = sub.add_parser("compare-domains", help="is safety special? domain patches and their geometry, side by side",
                        description="Train safety, knowledge and technical patches with the same recipe and budget, "
                                    "evaluate each on its own held-out domain and on the general and safety metrics, "
                                    "and compare their geometry (the paper's section 5.4 / Figure 8b).")
    _common(cd)

    lv = sub.add_parser("levers", help="which levers make a safety-only patch discriminate (selected on validation)",
                        description="Train one patch per lever (target modules, layers, orthogonality, retain term, "
                                    "template augmentation) and their best combination; choose each one's scale and "
                                    "the preset on validation splits only, then report all on test splits. Writes "
                                    "levers.json, levers.csv, selection.json and preset.yaml.")
    _common(lv)

    rp = sub.add_parser("reproduce", help="the paper end to end on one model, with an HTML report",
                        description="Run the experiment plan (sweep, geometry, red-team rounds, domain patches, judge "
                                    "validation), each step resumable, and write report.html (self-contained) and "
                                    "results.json, saying claim by claim whether the paper's claims held.")
    _common(rp)
    rp.add_argument("--preset", help="small (CPU-sized, default) or paper (larger budgets, for GPUs)")

    pt = sub.add_parser("patch", help="stack, merge, export, inspect, verify and compare patches",
                        description="Manage patches. PATCH@SCALE gives a patch a scale (default 1).")
    psub = pt.add_subparsers(dest="patch_command", required=True)
    for name, text in (("apply", "stack patches (each with a scale) into one patch: W0 + sum of scale x update"),
                       ("merge", "bake patches into a standalone model directory (plain transformers / vLLM)")):
        cmd = psub.add_parser(name, help=text, description=text)
        cmd.add_argument("patches", nargs="+", metavar="PATCH[@SCALE]")
        cmd.add_argument("--model", help="the base (default: the embedded SmolLM2-135M); patches must fit it")
        cmd.add_argument("--output", required=True)
        cmd.add_argument("--overwrite", action="store_true")
        cmd.add_argument("--allow-base-mismatch", action="store_true",
                         help="accept patches made for another base (recorded in the output manifest)")
        cmd.add_argument("-v", "--verbose", action="store_true")
    exp = psub.add_parser("export", help="copy a verified patch with a model card, ready to share")
    exp.add_argument("patch")
    exp.add_argument("--output", required=True)
    exp.add_argument("--overwrite", action="store_true")
    info = psub.add_parser("info", help="what a patch is: base, method, config, data, cost, files")
    info.add_argument("patch")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    ver = psub.add_parser("verify", help="check a patch's file hashes (and, with --model, its base)")
    ver.add_argument("patch")
    ver.add_argument("--model", help="the base it must fit (default: only the hashes are checked)")
    dif = psub.add_parser("diff", help="subspace overlap between patches (0 = orthogonal)")
    dif.add_argument("patches", nargs="+")
    dif.add_argument("--model", help="the base (default: the embedded SmolLM2-135M)")
    dif.add_argument("--labels", nargs="+")
    for cmd in (exp, info, ver, dif):
        cmd.add_argument("-v", "--verbose", action="store_true")

    sub.add_parser("datasets", help="list the registered datasets (names, kinds, counts; never their text)")
    return parser


def _config(cls, args: argparse.Namespace, extra: dict[str, object], preset: tuple[str, dict] | None = None):
    from orthopatch.config import load_config

    overrides = list(args.overrides)
    for key, value in extra.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(cls, args.config, overrides, preset=preset)


def _flow(items: list[str]) -> str:
    import json

    return json.dumps(items)


def _judges_command(args: argparse.Namespace) -> int:
    from orthopatch.evaluate.judges import EMBEDDING_JUDGES, STRING_JUDGES, check_judge_name

    if not args.validate:
        for judge in STRING_JUDGES.values():
            print(f"{judge.name:18s} refusal  string-match ({judge.mode}) v{judge.version}: {judge.description}")
        print(f"{'embed-minilm':18s} refusal  all-MiniLM-L6-v2 + logistic regression fitted on PyRIT's labelled "
              "refusal rows (train split) v1")
        print(f"{'hf-classifier:M':18s} refusal  your sequence-classification model M (Hub id or directory)")
        print(f"{'hf-guard:M':18s} harm     your causal guard model M, Llama-Guard style prompt (extra judge only)")
        print("String judges take :prefix or :substring to change the match mode, e.g. strmatch-jbb:prefix.")
        return 0
    from rich.console import Console
    from rich.table import Table

    from orthopatch.evaluate.judge_validation import validate_judges

    for name in args.judges or []:
        check_judge_name(name)
    report = validate_judges(args.judges or [*STRING_JUDGES, *EMBEDDING_JUDGES])
    data = report["data"]
    table = Table(title=f"judge agreement with PyRIT human refusal labels: held-out {data['split']} split, "
                        f"n={data['n_used']} ({data['n_refusal']} refusals)")
    for column in ("judge", "accuracy [95% CI]", "F1", "precision", "recall"):
        table.add_column(column, justify="left" if column == "judge" else "right")
    for name, entry in report["judges"].items():
        if "skipped" in entry:
            table.add_row(name, entry["skipped"], "", "", "")
            continue
        acc = entry["accuracy"]
        table.add_row(name, f"{acc['value']:.3f} [{acc['ci95'][0]:.2f}-{acc['ci95'][1]:.2f}]", f"{entry['f1']:.3f}",
                      f"{entry['precision']:.3f}", f"{entry['recall']:.3f}")
    Console(width=140).print(table)
    if args.output:
        from orthopatch.io import write_json_atomic

        write_json_atomic(args.output, report)
        print(f"written to {args.output}")
    return 0


def _sweep_table(summary: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="orthopatch sweep (held-out HarmBench; over-refusal on benign-sensitive prompts)")
    columns = [("cell", "id"), ("refusal", "harmful_refusal"), ("jailbreak ASR", "jailbreak_asr_mean"),
               ("over-refusal", "over_refusal"), ("trivia", "trivia"), ("ppl", "perplexity"),
               ("train s", "train_seconds"), ("peak MB", "peak_memory_mb"), ("trainable", "trainable_parameters"),
               ("MB on disk", "size_on_disk_mb")]
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "cell" else "right")
    for row in [summary["base"], *summary["rows"]]:
        cells = []
        for _, key in columns:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif key in ("harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia"):
                cells.append(f"{100 * value:.1f}%")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    target = summary["cost_to_target"]
    return capture.get() + (f"target ({target['rule']}): LoRA safety-only met={target['lora_safety_only']['met']} "
                            f"in {target['lora_safety_only']['train_seconds']:.0f} s; full-parameter ratio search "
                            f"met by {target['full_ratio_search']['met_by'] or 'none'} after "
                            f"{target['full_ratio_search']['train_seconds']:.0f} s of training")


def _patch_command(args: argparse.Namespace, command: str) -> int:
    import json

    from orthopatch.patches import stack

    if args.patch_command in ("apply", "merge"):
        patches = [stack.parse_patch_spec(spec) for spec in args.patches]
        if args.patch_command == "apply":
            from orthopatch.models.loading import fingerprint, resolve_model_path

            path = stack.stack_adapters(patches, args.output, base_fingerprint=fingerprint(
                resolve_model_path(args.model)[1]), allow_base_mismatch=args.allow_base_mismatch,
                overwrite=args.overwrite, command=command)
        else:
            path = stack.merge_patches(patches, args.output, model=args.model,
                                       allow_base_mismatch=args.allow_base_mismatch, overwrite=args.overwrite,
                                       command=command)
        print(f"{'stacked patch' if args.patch_command == 'apply' else 'merged model'} written to {path}")
        return 0
    if args.patch_command == "export":
        print(f"exported to {stack.export_patch(args.patch, args.output, overwrite=args.overwrite)}")
        return 0
    if args.patch_command == "info":
        from orthopatch.patches.manifest import read_manifest

        manifest = read_manifest(args.patch)
        if args.json:
            print(json.dumps(manifest, indent=2))
            return 0
        base, cost, config = manifest.get("base") or {}, manifest.get("cost") or {}, manifest.get("config") or {}
        lora = config.get("lora") or {}
        print(f"patch {args.patch}: {manifest.get('kind')} ({manifest.get('method')}), created {manifest.get('created')}")
        print(f"  base: {base.get('spec')} fingerprint {base.get('fingerprint')}")
        if lora:
            print(f"  LoRA r={lora.get('r')} alpha={lora.get('alpha')} targets={lora.get('target_modules')} "
                  f"layers={lora.get('layers')}")
        if config:
            print(f"  data: {', '.join(config.get('data') or [])}; lr {config.get('lr')}, {config.get('epochs')} "
                  f"epochs, seed {manifest.get('seed')}")
        for entry in manifest.get("stack", []):
            print(f"  stacked: {entry['path']} x {entry['scale']} (adapter {entry['adapter_sha256'][:12]})")
        if cost:
            print(f"  cost: {cost.get('tokens_trained')} tokens, {cost.get('wall_seconds')} s, peak "
                  f"{cost.get('peak_memory_mb')} MB, {cost.get('trainable_parameters')} trainable parameters")
        for name, sha in manifest.get("files", {}).items():
            print(f"  {name}  {sha}")
        return 0
    if args.patch_command == "verify":
        from orthopatch.patches.manifest import verify_patch

        fp = None
        if args.model:
            from orthopatch.models.loading import fingerprint, resolve_model_path

            fp = fingerprint(resolve_model_path(args.model)[1])
        manifest = verify_patch(args.patch, fp)
        print(f"ok: {len(manifest['files'])} files match their sha256"
              + (f"; made for this base ({fp[:12]})" if fp else "; base not checked (give --model)"))
        return 0
    if args.patch_command == "diff":
        overlap = stack.diff_patches(args.patches, model=args.model, labels=args.labels)
        for pair, row in overlap.items():
            print(f"{pair}: MSO input {row['mso_input']:.4f} (random {row['random_mso_input']:.4f}), output "
                  f"{row['mso_output']:.4f} (random {row['random_mso_output']:.4f}); largest cosine input "
                  f"{row['max_cosine_input']:.3f}, output {row['max_cosine_output']:.3f}; {row['n_modules']} shared "
                  "modules")
        return 0
    return 1


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "orthopatch " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _quiet_libraries(getattr(args, "verbose", False))
        progress = not getattr(args, "quiet", False)
        if args.command == "datasets":
            from orthopatch.data.registry import REGISTRY, load_dataset

            for name, spec in REGISTRY.items():
                n = len(load_dataset(name).records)
                flag = "harmful" if spec.harmful else "benign"
                print(f"{name:28s} {spec.kind:11s} {flag:8s} n={n:<5d} splits={spec.splits}  {spec.description}")
            return 0
        if args.command == "train":
            from orthopatch.config import TrainConfig
            from orthopatch.train.sft import train_patch

            mix = None
            if args.mix is not None:
                kind, _, ratio = args.mix.partition("=")
                if kind != "general" or not ratio:
                    raise UserError(f"--mix takes general=RATIO, got {args.mix!r}", field="mix")
                mix = ratio
            from orthopatch.config import TRAIN_PRESETS

            if args.preset is not None and args.preset not in TRAIN_PRESETS:
                raise UserError(f"unknown preset {args.preset!r}; known: {', '.join(TRAIN_PRESETS)}", field="preset")
            preset = (args.preset, TRAIN_PRESETS[args.preset]) if args.preset else None
            cfg = _config(TrainConfig, args, {"model": args.model, "output": args.output, "method": args.method,
                                              "data": _flow(args.data) if args.data else None, "mix_general": mix},
                          preset=preset)
            path = train_patch(cfg, overwrite=args.overwrite, progress=progress, command=command)
            from accelerate import PartialState

            if PartialState().is_main_process:  # under `accelerate launch`, say it once
                print(f"patch written to {path}")
            return 0
        if args.command == "eval":
            from orthopatch.config import EvalConfig
            from orthopatch.evaluate.runner import run_eval
            from orthopatch.report.table import side_by_side

            attacks = None if args.attacks is None else _flow([] if args.attacks == ["none"] else args.attacks)
            cfg = _config(EvalConfig, args, {"model": args.model, "output": args.output, "patch": args.patch,
                                             "allow_base_mismatch": "true" if args.allow_base_mismatch else None,
                                             "judge": args.judge, "attacks": attacks,
                                             "extra_judges": _flow(args.extra_judges) if args.extra_judges else None,
                                             "lm_eval": _flow(args.lm_eval) if args.lm_eval else None,
                                             "lm_eval_include": args.lm_eval_include})
            path, record = run_eval(cfg, overwrite=args.overwrite, progress=progress, command=command)
            print(side_by_side({"model + patch" if cfg.patch else "model": record}, title=f"orthopatch eval: {path}"))
            print(f"results written to {path}")
            return 0
        if args.command == "rejudge":
            from orthopatch.evaluate.rejudge import rejudge
            from orthopatch.report.table import side_by_side

            path, record = rejudge(args.run, args.judge, args.extra_judges, output=args.output,
                                   overwrite=args.overwrite, command=command)
            print(side_by_side({f"judge {args.judge}": record}, title=f"orthopatch rejudge: {path}"))
            print(f"results written to {path}")
            return 0
        if args.command == "judges":
            return _judges_command(args)
        if args.command == "patch":
            return _patch_command(args, command)
        if args.command == "sweep":
            from orthopatch.recipes.sweep import SweepConfig, run_sweep

            preset = None if args.preset is None else ("null" if args.preset == "none" else args.preset)
            cfg = _config(SweepConfig, args, {"model": args.model, "output": args.output, "preset": preset})
            summary = run_sweep(cfg, echo=print)
            print(_sweep_table(summary))
            print(f"sweep written to {cfg.output}")
            return 0
        if args.command == "reproduce":
            from orthopatch.recipes.reproduce import ReproduceConfig, run_reproduce

            cfg = _config(ReproduceConfig, args, {"model": args.model, "output": args.output,
                                                  "preset": args.preset})
            results = run_reproduce(cfg, echo=print, command=command)
            for claim in results["claims"]:
                print(f"[{claim['verdict']}] {claim['claim']}: {claim['value']}")
            print(f"report written to {cfg.output}/report.html")
            return 0
        if args.command == "compare-domains":
            from orthopatch.recipes.domains import DomainsConfig, run_domains

            cfg = _config(DomainsConfig, args, {"model": args.model, "output": args.output})
            record = run_domains(cfg, overwrite=args.overwrite, echo=print)
            for row in record["table"]:
                print(row)
            print(f"domain comparison written to {cfg.output} ({record['wall_seconds']} s)")
            return 0
        if args.command == "levers":
            from orthopatch.recipes.levers import LeversConfig, run_levers

            cfg = _config(LeversConfig, args, {"model": args.model, "output": args.output})
            record = run_levers(cfg, echo=print)
            keys = ("scale", "harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia", "perplexity")
            for row in record["rows"]:
                print(row["lever"], {k: row.get(k) for k in keys})
            print(f"selected on validation: {record['selection']['chosen']} at scale {record['selection']['scale']}; "
                  f"written to {cfg.output} ({record['wall_seconds']} s)")
            return 0
        if args.command == "redteam":
            from orthopatch.recipes.redteam import RedteamConfig, run_redteam

            cfg = _config(RedteamConfig, args, {"model": args.model, "output": args.output, "rounds": args.rounds,
                                                "modes": _flow(args.modes) if args.modes else None})
            record = run_redteam(cfg, overwrite=args.overwrite, echo=print)
            print(f"red-team rounds written to {cfg.output} ({record['wall_seconds']} s)")
            return 0
        if args.command == "analyze":
            from orthopatch.analysis.run import AnalyzeConfig, analyze
            from orthopatch.report.table import geometry_table

            cfg = AnalyzeConfig(targets=args.targets, labels=args.labels, base=args.base, output=args.output,
                                ks=args.ks, rank=args.rank, functional=not args.no_functional,
                                n_prompts=args.n_prompts, allow_base_mismatch=args.allow_base_mismatch)
            path, results = analyze(cfg, overwrite=args.overwrite)
            print(geometry_table(results))
            print(f"geometry written to {path}")
            return 0
        if args.command == "select-scale":
            from orthopatch.patches.dose import select_scale

            record = select_scale(args.patch, args.scales, model=args.model, tolerance=args.tolerance,
                                  output=args.output, overwrite=args.overwrite, progress=not args.quiet)
            base = record["base_rates"]
            print(f"base (validation): harmful refusal {base['harmful_refusal']:.1%}, "
                  f"over-refusal {base['over_refusal']:.1%}")
            for row in record["scales"]:
                print(f"scale {row['scale']:<5g} harmful refusal {row['harmful_refusal']:6.1%}  over-refusal "
                      f"{row['over_refusal']:6.1%}  {'ok' if row['feasible'] else 'over-refuses'}")
            if record["chosen_scale"] is None:
                print(f"no scale kept over-refusal within the base's + {args.tolerance:g}; try smaller scales "
                      f"(written to {args.output}/dose.json)")
            else:
                print(f"chosen scale: {record['chosen_scale']} (written to {args.output}/dose.json)")
            return 0
        if args.command == "demo":
            from orthopatch.recipes.demo import run_demo

            run_demo(args.output or "runs/demo", model=args.model, overwrite=args.overwrite, quick=args.quick,
                     progress=progress)
            return 0
    except UserError as error:
        print(f"orthopatch: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("orthopatch: interrupted; no partial output was kept (a rerun of a training command resumes from "
              "its last checkpoint)", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
