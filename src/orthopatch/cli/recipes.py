"""The end-to-end recipes: ``demo``, ``sweep``, ``redteam``, ``levers``, ``compare-domains``, ``reproduce``."""

from __future__ import annotations

import argparse

from orthopatch.cli.common import add_common, add_verbose, config_from, flow, progress


def recipe_parser(sub, name: str, run, help_: str, description: str) -> argparse.ArgumentParser:
    """A recipe's subcommand with the common options (--config, --model, --output, --set, ...)."""
    parser = sub.add_parser(name, help=help_, description=description)
    add_common(parser)
    parser.set_defaults(run=run)
    return parser


def register(sub) -> None:
    demo = recipe_parser(sub, "demo", run_demo_command,
                         "base vs naive vs selective safety patch, side by side, with a report",
                         "The whole story on the embedded model in one command.")
    demo.add_argument("--quick", action="store_true", help="a smoke-sized run (less data, fewer samples)")
    demo.add_argument("--recipe", help="the recommended recipe to show against the naive one (a train preset; "
                                       "default selective)")
    rt = recipe_parser(sub, "redteam", run_redteam_command,
                       "lifelong red-teaming: attack, patch what broke, evaluate, repeat",
                       "Rounds of attack (families held out from earlier rounds) -> patch on the complied prompts -> "
                       "evaluation on held-out goals (ASR per round, forgetting, over-refusal, general metrics, patch "
                       "overlap), for each mode: stack, merge, continue, and the full-parameter DPO baseline. Writes "
                       "redteam.json, rounds.csv, rounds.png.")
    rt.add_argument("--rounds", type=int)
    rt.add_argument("--modes", nargs="+", help="stack merge continue full-dpo (default: stack merge full-dpo)")
    register_sweep(sub)
    recipe_parser(sub, "compare-domains", run_domains_command,
                  "is safety special? domain patches and their geometry, side by side",
                  "Train safety, knowledge and technical patches with the same recipe and budget, evaluate each on "
                  "its own held-out domain and on the general and safety metrics, and compare their geometry (the "
                  "paper's section 5.4 / Figure 8b).")
    recipe_parser(sub, "levers", run_levers_command,
                  "which levers make a safety-only patch discriminate (selected on validation)",
                  "Train one patch per lever (target modules, layers, orthogonality, retain term, template "
                  "augmentation) and their best combination; choose each one's scale and the preset on validation "
                  "splits only, then report all on test splits. Writes levers.json, levers.csv, selection.json and "
                  "preset.yaml.")
    recipe_parser(sub, "selective", run_selective_command,
                  "the selective-patch study: every method family, chosen on validation",
                  "Train the naive, contrastive, gated, cascade and twins recipes on the same data and budget, place each "
                  "on its refusal / over-refusal frontier and choose on validation splits only, ablate the contrast "
                  "sets, then report every family once on test splits. Writes selection.json (before any test "
                  "evaluation), selective.json, selective.csv, selective.md and frontier figures.")
    rp = recipe_parser(sub, "reproduce", run_reproduce_command,
                       "the paper end to end on one model, with an HTML report",
                       "Run the experiment plan (sweep, geometry, red-team rounds, domain patches, judge validation), "
                       "each step resumable, and write report.html (self-contained) and results.json, saying claim "
                       "by claim whether the paper's claims held.")
    rp.add_argument("--preset", help="small (CPU-sized, default) or paper (larger budgets, for GPUs)")


def register_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="the paper's comparisons as a resumable grid (method x mix x rank x lr x epochs)",
                        description="Train and evaluate every cell of a grid (or a preset: paper-small); finished "
                                    "cells are never recomputed, so rerunning after an interruption resumes. Writes "
                                    "sweep.json, sweep.csv and figures (trade-off, ratio, rank) with their CSVs.")
    sw.add_argument("--preset", help="paper-small (default), or 'none' to use the grid lists of the config")
    sw.add_argument("--config", help="YAML sweep config")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--model")
    sw.add_argument("--output", default=None)
    add_verbose(sw)
    sw.set_defaults(run=run_sweep_command)


def run_demo_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.demo import QUICK, DemoConfig, run_demo

    extra = {"model": args.model, "output": args.output, "recipe": args.recipe}
    if args.quick:
        extra.update({"quick": "true", **QUICK})
    cfg = config_from(DemoConfig, args, extra)
    run_demo(cfg, overwrite=args.overwrite, progress=progress(args))
    return 0


def run_sweep_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.sweep import SweepConfig

    preset = None if args.preset is None else ("null" if args.preset == "none" else args.preset)
    cfg = config_from(SweepConfig, args, {"model": args.model, "output": args.output, "preset": preset})
    from orthopatch.recipes.sweep import run_sweep
    from orthopatch.report.table import sweep_table

    summary = run_sweep(cfg, echo=print)
    print(sweep_table(summary))
    print(f"sweep written to {cfg.output}")
    return 0


def run_reproduce_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.reproduce import ReproduceConfig, run_reproduce

    cfg = config_from(ReproduceConfig, args, {"model": args.model, "output": args.output, "preset": args.preset})
    results = run_reproduce(cfg, echo=print, command=command)
    for claim in results["claims"]:
        print(f"[{claim['verdict']}] {claim['claim']}: {claim['value']}")
    print(f"report written to {cfg.output}/report.html")
    return 0


def run_domains_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.domains import DomainsConfig, run_domains

    cfg = config_from(DomainsConfig, args, {"model": args.model, "output": args.output})
    record = run_domains(cfg, overwrite=args.overwrite, echo=print)
    for row in record["table"]:
        print(row)
    print(f"domain comparison written to {cfg.output} ({record['wall_seconds']} s)")
    return 0


def run_levers_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.levers import LeversConfig, run_levers

    cfg = config_from(LeversConfig, args, {"model": args.model, "output": args.output})
    record = run_levers(cfg, echo=print)
    keys = ("scale", "harmful_refusal", "jailbreak_asr_mean", "over_refusal", "trivia", "perplexity")
    for row in record["rows"]:
        print(row["lever"], {k: row.get(k) for k in keys})
    print(f"selected on validation: {record['selection']['chosen']} at scale {record['selection']['scale']}; "
          f"written to {cfg.output} ({record['wall_seconds']} s)")
    return 0


def run_redteam_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.redteam import RedteamConfig, run_redteam

    cfg = config_from(RedteamConfig, args, {"model": args.model, "output": args.output, "rounds": args.rounds,
                                            "modes": flow(args.modes) if args.modes else None})
    record = run_redteam(cfg, overwrite=args.overwrite, echo=print)
    print(f"red-team rounds written to {cfg.output} ({record['wall_seconds']} s)")
    return 0


def run_selective_command(args: argparse.Namespace, command: str) -> int:
    from orthopatch.recipes.selective import SelectiveConfig

    cfg = config_from(SelectiveConfig, args, {"model": args.model, "output": args.output})
    from orthopatch.recipes.selective import run_selective
    from orthopatch.report.selective_report import markdown

    record = run_selective(cfg, echo=print)
    print(markdown(record))
    print(f"chosen on validation: {record['selection']['chosen']}; written to {cfg.output}")
    return 0
