"""``orthopatch datasets``: the registered sets (names, kinds, counts; never their text)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    ds = sub.add_parser("datasets", help="list the registered datasets (names, kinds, counts; never their text)")
    ds.set_defaults(run=run_datasets)


def run_datasets(args: argparse.Namespace, command: str) -> int:
    from orthopatch.data.registry import REGISTRY, load_dataset

    for name, spec in REGISTRY.items():
        n = len(load_dataset(name).records)
        flag = "harmful" if spec.harmful else "private" if spec.private else "benign"  # private: benign, not shown
        print(f"{name:28s} {spec.kind:11s} {flag:8s} n={n:<5d} splits={spec.splits}  {spec.description}")
    return 0
