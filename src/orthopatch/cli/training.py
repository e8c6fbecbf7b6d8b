"""``orthopatch train``."""

from __future__ import annotations

import argparse

from orthopatch.cli.common import add_common, config_from, flow, progress
from orthopatch.errors import UserError


def register(sub) -> None:
    train = sub.add_parser("train", help="train a safety patch (LoRA refusal-SFT) or a baseline (full SFT, DPO)",
                           description="Train a LoRA patch (a PEFT adapter directory) or, with --method full-*, a "
                                       "full model directory; either way with orthopatch.json (provenance, cost).")
    add_common(train)
    train.add_argument("--data", nargs="+", help="registered dataset names or user JSONL files")
    train.add_argument("--method", help="lora-sft (default), full-sft, lora-dpo, full-dpo")
    train.add_argument("--mix", metavar="general=RATIO",
                       help="mix general data into the safety data: its share of the training set, e.g. general=0.5")
    train.add_argument("--preset", help="a named recipe under --config and --set (see TRAIN_PRESETS in "
                                        "orthopatch.config): small-model")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace, command: str) -> int:
    from orthopatch.train.config import TRAIN_PRESETS, TrainConfig

    mix = None
    if args.mix is not None:
        kind, _, ratio = args.mix.partition("=")
        if kind != "general" or not ratio:
            raise UserError(f"--mix takes general=RATIO, got {args.mix!r}", field="mix")
        mix = ratio
    if args.preset is not None and args.preset not in TRAIN_PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; known: {', '.join(TRAIN_PRESETS)}", field="preset")
    preset = (args.preset, TRAIN_PRESETS[args.preset]) if args.preset else None
    cfg = config_from(TrainConfig, args, {"model": args.model, "output": args.output, "method": args.method,
                                          "data": flow(args.data) if args.data else None, "mix_general": mix},
                      preset=preset)
    from orthopatch.io import check_new_output, output_lock

    check_new_output(cfg.output, args.overwrite)
    with output_lock(cfg.output):  # before the heavy imports: a second run on this output stops at once
        from accelerate import PartialState

        from orthopatch.train.run import train_patch

        path = train_patch(cfg, overwrite=args.overwrite, progress=progress(args), command=command)
    if PartialState().is_main_process:  # under `accelerate launch`, say it once
        print(f"patch written to {path}")
    return 0
