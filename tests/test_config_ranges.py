"""Every declared numeric field of every config refuses an out-of-range value when the config is read, naming the
field (hypothesis draws the values); and two runs on one output cannot overlap."""

import dataclasses
import math
import os
import subprocess
import sys
import time
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orthopatch.config import Range, load_config
from orthopatch.errors import UserError
from orthopatch.evaluate.config import EvalConfig
from orthopatch.recipes.analyze import AnalyzeConfig
from orthopatch.recipes.demo import DemoConfig
from orthopatch.recipes.domains import DomainsConfig
from orthopatch.recipes.dose import DoseSettings
from orthopatch.recipes.levers import LeversConfig
from orthopatch.recipes.redteam import RedteamConfig
from orthopatch.recipes.reproduce import ReproduceConfig
from orthopatch.recipes.selective import SelectiveConfig
from orthopatch.recipes.sweep import SweepConfig
from orthopatch.serve.config import ServeConfig
from orthopatch.train.config import TrainConfig

CONFIGS = [TrainConfig, EvalConfig, SweepConfig, RedteamConfig, LeversConfig, DomainsConfig, ReproduceConfig,
           AnalyzeConfig, DoseSettings, DemoConfig, SelectiveConfig, ServeConfig]


def ranged_fields(cls, prefix: str = "") -> list[tuple[str, Range, bool, bool]]:
    """(dotted name, range, is an int, is a list) of every field with a declared range, nested groups included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += ranged_fields(type(default), f"{prefix}{f.name}.")
        elif "range" in f.metadata:
            text = str(hints[f.name])
            out.append((prefix + f.name, f.metadata["range"], "int" in text and "float" not in text,
                        text.startswith("list")))
    return out


FIELDS = [(cls, *field) for cls in CONFIGS for field in ranged_fields(cls)]


def test_every_config_declares_ranges_for_its_numbers():
    from orthopatch.train.config import DpoSettings, GateSettings, LoraSettings, OrthoSettings, RetainSettings

    for cls in [*CONFIGS, LoraSettings, RetainSettings, OrthoSettings, DpoSettings, GateSettings]:
        hints = typing.get_type_hints(cls)
        numeric = {f.name for f in dataclasses.fields(cls)
                   if any(t in str(hints[f.name]) for t in ("int", "float")) and "str" not in str(hints[f.name])}
        declared = {name.split(".")[0] for name, *_ in ranged_fields(cls)}
        assert numeric <= declared, f"{cls.__name__}: no range for {sorted(numeric - declared)}"


def outside(bounds: Range, integer: bool) -> st.SearchStrategy:
    """Values that break ``bounds``: below a lower bound, above an upper one, or not finite (floats)."""
    options = []
    step = 1 if integer else 1e-6
    if bounds.ge is not None:
        options.append(st.integers(max_value=int(math.ceil(bounds.ge)) - 1, min_value=-10**6) if integer
                       else st.floats(max_value=bounds.ge - step, min_value=-1e9, allow_nan=False))
    if bounds.gt is not None:
        options.append(st.integers(max_value=int(math.floor(bounds.gt)), min_value=-10**6) if integer
                       else st.floats(max_value=bounds.gt, min_value=-1e9, allow_nan=False))
    if bounds.le is not None:
        options.append(st.integers(min_value=int(math.floor(bounds.le)) + 1, max_value=10**6) if integer
                       else st.floats(min_value=bounds.le + step, max_value=1e9, allow_nan=False))
    if bounds.lt is not None:
        options.append(st.integers(min_value=int(math.ceil(bounds.lt)), max_value=10**6) if integer
                       else st.floats(min_value=bounds.lt, max_value=1e9, allow_nan=False))
    if not integer:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(*options)


@pytest.mark.parametrize(("cls", "name", "bounds", "integer", "is_list"), FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n, *_ in FIELDS])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_out_of_range_values_are_refused_naming_the_field(cls, name, bounds, integer, is_list, data):
    value = data.draw(outside(bounds, integer))
    text = repr(value) if not isinstance(value, float) or math.isfinite(value) else \
        {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[repr(value)]
    with pytest.raises(UserError) as error:
        load_config(cls, None, [f"{name}=[{text}]" if is_list else f"{name}={text}"])
    assert f"field '{name}'" in str(error.value)


def test_a_second_run_on_the_same_output_stops_at_once_and_a_dead_runs_lock_does_not_block(tiny_model,
                                                                                           refusal_jsonl, tmp_path):
    out = tmp_path / "patch"
    cmd = [sys.executable, "-m", "orthopatch.cli", "train", "--model", str(tiny_model), "--data", str(refusal_jsonl),
           "--output", str(out), "--quiet", "--set", "device=cpu", "--set", "epochs=30", "--set", "batch_size=1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".patch.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert lock.exists(), "the first run never took its lock"
    start = time.time()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and time.time() - start < 30
    assert f"pid {first.pid}" in second.stderr and str(out) in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    first.kill()
    first.wait()
    assert lock.exists()  # killed: nothing removed it
    rerun = subprocess.run(cmd[:-4] + ["--set", "epochs=1", "--overwrite"], capture_output=True, text=True,
                           timeout=600, env={**os.environ})
    assert rerun.returncode == 0, rerun.stderr
    assert not lock.exists() and (out / "orthopatch.json").is_file()
