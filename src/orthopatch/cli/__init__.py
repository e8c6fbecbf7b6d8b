"""The ``orthopatch`` command line. Each command registers its arguments and runs from its own module here:
``training`` (train), ``evaluation`` (eval, rejudge, judges), ``patch`` (patch ...), ``analysis`` (analyze,
select-scale), ``recipes`` (demo, sweep, redteam, levers, compare-domains, reproduce), ``serve`` and ``datasets``.

Every command imports the library it runs inside its ``run`` function: that defers torch, transformers and PEFT
(seconds to import), so ``--help`` and a bad flag or config value answer at once.
"""

from __future__ import annotations

import argparse
import errno
import shlex
import signal
import sys

from orthopatch.cli import analysis, datasets, evaluation, patch, recipes, serve, training
from orthopatch.cli.common import quiet_libraries
from orthopatch.errors import UserError

COMMAND_MODULES = (training, evaluation, recipes, analysis, patch, serve, datasets)


class VersionAction(argparse.Action):
    """``--version``: the versions that matter and whether they match the lock the environment was set up from
    (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from orthopatch.lock import version_report

        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orthopatch", description="LoRA safety patches for Hugging Face causal LMs")
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions that matter and whether they match the set-up's lock, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "orthopatch " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        quiet_libraries(getattr(args, "verbose", False))
        return args.run(args, command)
    except UserError as error:
        print(f"orthopatch: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {error.filename}" if error.filename else ""
        print(f"orthopatch: error: no space left on device{where}; nothing partial was kept (free some space and "
              "rerun: a training run resumes from its last checkpoint)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("orthopatch: interrupted; no partial output was kept (a rerun of a training command resumes from "
              "its last checkpoint)", file=sys.stderr)
        return 130
