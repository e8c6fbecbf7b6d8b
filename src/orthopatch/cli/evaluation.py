"""``orthopatch eval``, ``rejudge`` and ``judges``."""

from __future__ import annotations

import argparse

from orthopatch.cli.common import add_common, add_verbose, config_from, flow, progress


def register(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model, optionally with a patch",
                        description="Evaluate safety, over-refusal and general capability; writes results.json and "
                                    "samples.jsonl.")
    add_common(ev)
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
    ev.set_defaults(run=run_eval_command)

    rj = sub.add_parser("rejudge", help="re-score an eval run with another judge, without generating again",
                        description="Re-judge the answers stored in RUN/samples.jsonl; writes a new run directory "
                                    "(default: RUN-rejudged-JUDGE) with results.json and samples.jsonl.")
    rj.add_argument("run_dir", metavar="run", help="an eval run directory")
    rj.add_argument("--judge", required=True, help="the new primary refusal judge")
    rj.add_argument("--extra-judges", nargs="*", metavar="JUDGE", help="default: the run's own extra judges")
    rj.add_argument("--output")
    rj.add_argument("--overwrite", action="store_true")
    add_verbose(rj)
    rj.set_defaults(run=run_rejudge)

    jd = sub.add_parser("judges", help="list the judges; --validate measures their agreement with human labels",
                        description="List the judges. With --validate, score each refusal judge on the held-out "
                                    "rows of PyRIT's human-labelled refusal set (accuracy with 95% CI, F1).")
    jd.add_argument("--validate", action="store_true")
    jd.add_argument("--judges", nargs="+", metavar="JUDGE", help="judges to validate (default: every named one)")
    jd.add_argument("--output", help="also write the validation as JSON to this file")
    add_verbose(jd)
    jd.set_defaults(run=run_judges)


def run_eval_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.evaluate.config import EvalConfig

    attacks = None if args.attacks is None else flow([] if args.attacks == ["none"] else args.attacks)
    cfg = config_from(EvalConfig, args, {"model": args.model, "output": args.output, "patch": args.patch,
                                         "allow_base_mismatch": "true" if args.allow_base_mismatch else None,
                                         "judge": args.judge, "attacks": attacks,
                                         "extra_judges": flow(args.extra_judges) if args.extra_judges else None,
                                         "lm_eval": flow(args.lm_eval) if args.lm_eval else None,
                                         "lm_eval_include": args.lm_eval_include})
    from orthopatch.io import check_new_output, output_lock

    check_new_output(cfg.output, args.overwrite)
    with output_lock(cfg.output):  # before the heavy imports: a second run on this output stops at once
        from orthopatch.evaluate.runner import run_eval
        from orthopatch.report.table import side_by_side

        path, record = run_eval(cfg, overwrite=args.overwrite, progress=progress(args), command=command)
    print(side_by_side({"model + patch" if cfg.patch else "model": record}, title=f"orthopatch eval: {path}"))
    print(f"results written to {path}")
    return 0


def run_rejudge(args: argparse.Namespace, command: str) -> int:
    from orthopatch.evaluate.rejudge import rejudge
    from orthopatch.report.table import side_by_side

    path, record = rejudge(args.run_dir, args.judge, args.extra_judges, output=args.output,
                           overwrite=args.overwrite, command=command)
    print(side_by_side({f"judge {args.judge}": record}, title=f"orthopatch rejudge: {path}"))
    print(f"results written to {path}")
    return 0


def run_judges(args: argparse.Namespace, command: str) -> int:
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
    from orthopatch.evaluate.judge_validation import validate_judges
    from orthopatch.io import write_json_atomic
    from orthopatch.report.table import judge_validation_table

    for name in args.judges or []:
        check_judge_name(name)
    report = validate_judges(args.judges or [*STRING_JUDGES, *EMBEDDING_JUDGES])
    print(judge_validation_table(report))
    if args.output:
        write_json_atomic(args.output, report)
        print(f"written to {args.output}")
    return 0
