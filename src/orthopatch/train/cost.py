"""A run's peak memory, its own and not that of earlier runs in the same process (a sweep, the demo)."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch


def reset_peak_memory(device: str) -> None:
    """Start a fresh high-water mark. On Linux, writing 5 to /proc/self/clear_refs resets VmHWM."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    # elsewhere the process-wide peak (ru_maxrss) is reported; it can include earlier work
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
