"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any


def quiet_libraries(verbose: bool) -> None:
    """No library warnings or progress bars unless -v: set through the environment, which transformers reads when it
    is imported (so a command that fails on its config never has to import it), and directly if it already is."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging  # already imported: this costs nothing

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def add_common(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
    if with_config:
        parser.add_argument("--config", help="YAML config file (see configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one config key, e.g. --set lora.r=16 (repeatable)")
    parser.add_argument("--model", help="HF model id or local directory (default: the embedded SmolLM2-135M)")
    parser.add_argument("--output", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose(parser)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and progress")


def config_from(cls: type, args: argparse.Namespace, extra: dict[str, Any],
                preset: tuple[str, dict] | None = None) -> Any:
    """``cls`` from its defaults, a preset, ``--config``, ``--set`` and the command's own flags (``extra``, as
    ``--set`` values), checked before anything is loaded."""
    from orthopatch.config import load_config

    overrides = list(args.overrides)
    for key, value in extra.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(cls, args.config, overrides, preset=preset)


def flow(items: list[str]) -> str:
    """A list as a ``--set`` value (YAML flow sequence)."""
    return json.dumps(items)


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)
