"""``orthopatch analyze`` (geometry of updates) and ``select-scale`` (a patch's dose, on validation data)."""

from __future__ import annotations

import argparse

from orthopatch.cli.common import add_verbose


def register(sub) -> None:
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
    add_verbose(an)
    an.set_defaults(run=run_analyze)

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
    add_verbose(dose)
    dose.set_defaults(run=run_select_scale)


def run_analyze(args: argparse.Namespace, command: str) -> int:
    from orthopatch.config import make
    from orthopatch.recipes.analyze import AnalyzeConfig

    cfg = make(AnalyzeConfig, targets=args.targets, labels=args.labels, base=args.base, output=args.output,
               ks=args.ks, rank=args.rank, functional=not args.no_functional, n_prompts=args.n_prompts,
               allow_base_mismatch=args.allow_base_mismatch)
    from orthopatch.recipes.analyze import analyze
    from orthopatch.report.table import geometry_table

    path, results = analyze(cfg, overwrite=args.overwrite)
    print(geometry_table(results))
    print(f"geometry written to {path}")
    return 0


def run_select_scale(args: argparse.Namespace, command: str) -> int:
    from orthopatch.config import make
    from orthopatch.recipes.dose import DoseSettings

    settings = make(DoseSettings, scales=args.scales, tolerance=args.tolerance)
    from orthopatch.recipes.dose import select_scale

    record = select_scale(args.patch, settings.scales, model=args.model, tolerance=settings.tolerance,
                          output=args.output, overwrite=args.overwrite, progress=not args.quiet)
    base = record["base_rates"]
    print(f"base (validation): harmful refusal {base['harmful_refusal']:.1%}, over-refusal {base['over_refusal']:.1%}")
    for row in record["scales"]:
        print(f"scale {row['scale']:<5g} harmful refusal {row['harmful_refusal']:6.1%}  over-refusal "
              f"{row['over_refusal']:6.1%}  {'ok' if row['feasible'] else 'over-refuses'}")
    if record["chosen_scale"] is None:
        print(f"no scale kept over-refusal within the base's + {args.tolerance:g}; try smaller scales "
              f"(written to {args.output}/dose.json)")
    else:
        print(f"chosen scale: {record['chosen_scale']} (written to {args.output}/dose.json)")
    return 0
