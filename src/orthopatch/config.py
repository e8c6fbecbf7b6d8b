"""Run configuration: dataclasses, YAML files and ``key=value`` command-line overrides.

Every field has a default; a YAML file sets some of them; ``--set a.b=value`` overrides one (the value is parsed as
YAML). Unknown keys and wrong types are errors naming the file, line and field, never silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orthopatch.errors import UserError
from orthopatch.io import output_lock

# "auto": bfloat16 on a CUDA device that supports it, float32 elsewhere (models/loading.py: resolve_dtype)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field (each bound optional; None values are always allowed where the type
    admits None)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self, value: float) -> str:
        parts = " and ".join(f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                                    ("<", self.lt)) if bound is not None)
        return parts if math.isfinite(value) and parts else "a finite number" + (f" {parts}" if parts else "")


def num(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, factory: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A numeric field (or list of numbers) with its valid range next to its definition; :func:`validate` and every
    config read enforce it before any data or model is loaded."""
    return field(default=default, default_factory=factory, metadata={"range": Range(ge, gt, le, lt), **metadata})


POSITIVE = {"ge": 1}  # counts: at least one
CAP = {"ge": 1}  # sample caps: at least one, or None for "all"

# What a field of this name means in every config that has one (a field's own comment, where it has one, says more).
FIELD_HELP = {
    "model": "a Hugging Face id, a local directory, or None for the embedded SmolLM2-135M-Instruct",
    "output": "the output directory (never replaced without --overwrite)",
    "device": '"auto": CUDA when available, else the CPU; or a torch device ("cpu", "cuda:1")',
    "dtype": '"auto": bfloat16 on CUDA, float32 on a CPU',
    "seed": "the seed of everything random in the run",
    "split_seed": "the seed of the datasets' train / validation / test assignment (0: the registered splits)",
    "trust_remote_code": "run a model's own code from its directory or the Hub (off: transformers' own classes only)",
    "max_new_tokens": "new tokens per judged answer (refusal is judged on an answer's opening)",
    "lr": "the learning rate", "epochs": "passes over the training examples",
    "lora": "the adapter's settings (rank, alpha, dropout, target modules), as in train",
    "judge": "the primary judge (orthopatch judges lists them)",
}


@dataclass
class Placement:
    """Where a recipe's models run: every model it loads, trains or evaluates gets this device and dtype."""
    device: str = "auto"  # "auto": CUDA when available, else the CPU
    dtype: str = field(default="auto", metadata={"choices": lambda: DTYPES})


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def _resolve(cfg: Any, dotted: str, value: Any) -> str:
    """The current spelling of ``dotted``: an old flat key (``retain_weight``) maps to its nested field, and a list
    given for a settings group that takes one (``retain: [...]``) to that group's list field."""
    dotted = getattr(type(cfg), "ALIASES", {}).get(dotted, dotted)
    head, _, rest = dotted.partition(".")
    if not rest and head in _fields(cfg) and isinstance(value, list):
        list_key = next(f for f in dataclasses.fields(cfg) if f.name == head).metadata.get("list_key")
        if list_key:
            return f"{head}.{list_key}"
    return dotted


def _check_value(metadata: Any, value: Any, where: dict[str, Any]) -> None:
    """Enumerated choices, declared ranges and per-field checks of one value."""
    choices = metadata.get("choices")
    if choices is not None and value not in choices():
        raise UserError(f"unknown value {value!r}; choose one of: {', '.join(choices())}", **where)
    bounds = metadata.get("range")
    if bounds is not None:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not bounds.holds(item):
                raise UserError(f"must be {bounds.describe(item)}, got {item!r}", **where)
    checks = [(metadata["check"], value)] if "check" in metadata else []
    checks += [(metadata["check_each"], v) for v in value] if "check_each" in metadata else []
    for check, item in checks:
        try:
            check(item)
        except UserError as error:
            raise UserError(error.message, **where) from None


def _set(cfg: Any, dotted: str, value: Any, *, path: str | None = None, line: int | None = None) -> None:
    dotted = _resolve(cfg, dotted, value)
    *parents, leaf = dotted.split(".")
    target = cfg
    for i, part in enumerate(parents):
        sub = getattr(target, part, None) if part in _fields(target) else None
        if not dataclasses.is_dataclass(sub):
            raise UserError("unknown key", path=path, line=line, field=".".join(parents[: i + 1]))
        target = sub
    if leaf not in _fields(target):
        known = ", ".join(sorted(_fields(target)))
        raise UserError(f"unknown key (known: {known})", path=path, line=line, field=dotted)
    hint = typing.get_type_hints(type(target))[leaf]
    current = getattr(target, leaf)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise UserError("must be a mapping", path=path, line=line, field=dotted)
        for key, sub_value in value.items():
            _set(cfg, f"{dotted}.{key}", sub_value, path=path, line=line)
        return
    if isinstance(value, int) and not isinstance(value, bool) and hint is float:
        value = float(value)
    if isinstance(value, str) and _type_ok(1.0, hint) and not _type_ok(value, hint):
        # PyYAML (YAML 1.1) reads 1e-4 as a string; a float field means a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    if not _type_ok(value, hint):
        raise UserError(f"expected {_describe(hint)}, got {type(value).__name__} {value!r}", path=path, line=line,
                        field=dotted)
    metadata = next(f for f in dataclasses.fields(target) if f.name == leaf).metadata
    _check_value(metadata, value, {"path": path, "line": line, "field": dotted})
    setattr(target, leaf, value)


def validate(cfg: Any, source: str | None = None, prefix: str = "") -> Any:
    """Check every declared range and choice of ``cfg`` (recursively) and its dependent options (a ``check()``
    method); returns ``cfg``. Runs when a config is read, and at the start of every run built in code."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = {"path": source, "field": prefix + f.name}
        if dataclasses.is_dataclass(value):
            validate(value, source, f"{prefix}{f.name}.")
            continue
        if not _type_ok(value, hints[f.name]):
            raise UserError(f"expected {_describe(hints[f.name])}, got {type(value).__name__} {value!r}", **where)
        _check_value(f.metadata, value, where)
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            check()
        except UserError as error:
            field_name = f"{prefix}{error.field}" if error.field else None
            raise UserError(error.message, path=source, field=field_name) from None
    return cfg


def apply(cfg: Any, mapping: dict[str, Any], source: str) -> Any:
    """Set the (possibly nested) keys of ``mapping`` on ``cfg``, as a config file would (old spellings included;
    settings groups may be given as dataclasses); returns ``cfg``."""
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in mapping.items()}
    for key, value in flatten(plain):
        _set(cfg, key, value, path=source)
    return cfg


def make(cls: type, **values: Any) -> Any:
    """``cls`` from its defaults and ``values`` (flat or nested keys, old spellings too), checked like a file."""
    return validate(apply(cls(), values, f"{cls.__name__}(...)"))


def _fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


def flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.extend(flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
                preset: tuple[str, dict[str, Any]] | None = None) -> Any:
    """Build ``cls`` from its defaults, then a named ``preset`` (name, mapping), then the YAML file at ``path``, then
    ``key=value`` overrides."""
    cfg = cls()
    if preset is not None:
        apply(cfg, preset[1], f"preset {preset[0]}")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("config file not found", path=path)
        text = path.read_text(encoding="utf-8")
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            raise UserError(f"invalid YAML ({getattr(error, 'problem', error)})", path=path,
                            line=mark.line + 1 if mark else None) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError("a config file must be a mapping of keys to values", path=path)
        lines = _key_lines(node) if node is not None else {}
        for key, value in flatten(data):
            _set(cfg, key, value, path=str(path), line=lines.get(key))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = _hint_for(cfg, _resolve(cfg, key.strip(), value))
            if hint is not None and _type_ok(raw, hint) and not _type_ok(value, hint):
                value = raw  # e.g. a model name that looks like a number
        _set(cfg, key.strip(), value, path="--set")
    return validate(cfg)


def _hint_for(cfg: Any, dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            return None
    return typing.get_type_hints(type(target)).get(leaf) if leaf in _fields(target) else None


def checked_run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For a recipe ``fn(cfg, ...)``: check ``cfg`` (ranges, choices, dependent options) before anything loads, and
    hold the lock on ``cfg.output`` while the recipe writes there (a second run on the same output stops at once)."""

    @functools.wraps(fn)
    def run(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        validate(cfg)
        with output_lock(cfg.output):
            return fn(cfg, *args, **kwargs)

    return run


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
