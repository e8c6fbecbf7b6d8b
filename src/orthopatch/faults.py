"""Fault injection for the crash-safety tests: a run can be killed, interrupted or made to hit a full disk at named
points, and the tests check that a rerun resumes or restarts with no partial output anywhere.

``ORTHOPATCH_FAULT=PHASE[:N][:WHAT]`` fires at the N-th time (default the first) the run reaches ``PHASE``:

- ``data``: after a training run has prepared its data (before the loop);
- ``step``: after training batch N;
- ``save``: while a patch is being written (its weights are in the temporary directory, nothing renamed yet);
- ``eval-write``: while an evaluation's results are being written;
- ``cell``: inside a sweep cell, after its training and before its evaluation.

``WHAT`` is a signal name (default ``SIGKILL``; ``SIGINT`` becomes a KeyboardInterrupt) or ``ENOSPC`` (an OSError
"no space left on device", as a full disk gives). ``ORTHOPATCH_FAULT_AFTER_STEPS=N[:SIGNAL]`` is the older spelling
of ``step:N[:SIGNAL]``.
"""

from __future__ import annotations

import errno
import os
import signal

PHASES = ("data", "step", "save", "eval-write", "cell")
_reached: dict[str, int] = {}


def _spec() -> tuple[str, int, str] | None:
    raw = os.environ.get("ORTHOPATCH_FAULT")
    if not raw and os.environ.get("ORTHOPATCH_FAULT_AFTER_STEPS", "0") not in ("", "0"):
        raw = "step:" + os.environ["ORTHOPATCH_FAULT_AFTER_STEPS"]
    if not raw:
        return None
    phase, *rest = raw.split(":")
    count = int(rest.pop(0)) if rest and rest[0].isdigit() else 1
    return phase, count, rest[0] if rest else "SIGKILL"


def fault_point(phase: str, count: int | None = None) -> None:
    """Fire the configured fault if this is its phase and its N-th arrival (``count`` overrides the arrival counter,
    e.g. the number of batches done)."""
    spec = _spec()
    if spec is None:
        _reached.clear()
        return
    if spec[0] != phase:
        return
    if count is None:
        _reached[phase] = count = _reached.get(phase, 0) + 1
    if count != spec[1]:
        return
    if spec[2] == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if spec[2] == "SIGINT" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt  # started in the background (SIGINT ignored): the fault still means "Ctrl-C here"
    os.kill(os.getpid(), getattr(signal, spec[2]))


def reset() -> None:
    """Forget how often each phase was reached (tests run many runs in one process)."""
    _reached.clear()
