"""The ``orthopatch`` command line: train, eval, demo, datasets."""

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

    train = sub.add_parser("train", help="train a LoRA safety patch (refusal-SFT)",
                           description="Train a LoRA patch; writes a PEFT adapter directory plus orthopatch.json.")
    _common(train)
    train.add_argument("--data", nargs="+", help="registered dataset names or user JSONL files")

    ev = sub.add_parser("eval", help="evaluate a model, optionally with a patch",
                        description="Evaluate safety, over-refusal and general capability; writes results.json and "
                                    "samples.jsonl.")
    _common(ev)
    ev.add_argument("--patch", help="patch directory to attach (verified against its manifest and base)")
    ev.add_argument("--allow-base-mismatch", action="store_true",
                    help="apply a patch made for another base (recorded in the results)")

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

    sub.add_parser("datasets", help="list the registered datasets (names, kinds, counts; never their text)")
    return parser


def _config(cls, args: argparse.Namespace, extra: dict[str, object]):
    from orthopatch.config import load_config

    overrides = list(args.overrides)
    for key, value in extra.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(cls, args.config, overrides)


def _flow(items: list[str]) -> str:
    import json

    return json.dumps(items)


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

            cfg = _config(TrainConfig, args, {"model": args.model, "output": args.output,
                                              "data": _flow(args.data) if args.data else None})
            path = train_patch(cfg, overwrite=args.overwrite, progress=progress, command=command)
            print(f"patch written to {path}")
            return 0
        if args.command == "eval":
            from orthopatch.config import EvalConfig
            from orthopatch.evaluate.runner import run_eval
            from orthopatch.report.table import side_by_side

            cfg = _config(EvalConfig, args, {"model": args.model, "output": args.output, "patch": args.patch,
                                             "allow_base_mismatch": "true" if args.allow_base_mismatch else None})
            path, record = run_eval(cfg, overwrite=args.overwrite, progress=progress, command=command)
            print(side_by_side({"model + patch" if cfg.patch else "model": record}, title=f"orthopatch eval: {path}"))
            print(f"results written to {path}")
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
