"""Run configuration: dataclasses, YAML files and ``key=value`` command-line overrides.

Every field has a default; a YAML file sets some of them; ``--set a.b=value`` overrides one (the value is parsed as
YAML). Unknown keys and wrong types are errors naming the file, line and field, never silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orthopatch.errors import UserError

METHODS = ("lora-sft", "full-sft", "lora-dpo", "full-dpo")
# Named training recipes (`orthopatch train --preset NAME`), applied under --config and --set. Each comes from a
# measured study; the comment says which.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # `orthopatch levers` on SmolLM2-135M-Instruct (2026-11-29), chosen on validation splits only: of the naive
    # recipe, target modules, middle layers, both orthogonality levers, the retain term, template augmentation and
    # their union, a patch on the MLP up-projections alone, baked in at the dose 1.5, refused the most validation
    # requests (75%) with no validation over-refusal. On test splits it reached only 25% HarmBench refusal (issue 7's
    # closing note): the best found, not a solved problem. The dose is this model's; rerun `select-scale` for another.
    "small-model": {"max_examples": 64, "lora": {"target_modules": ["up_proj"]}, "scale": 1.5},
}
DEFAULT_ATTACKS = ("pyrit_top_level", "pyrit_in_the_wild", "garak_dan", "gcg", "prefix_injection",
                   "refusal_suppression", "past_tense")


def _check_judge(value: str) -> None:
    from orthopatch.evaluate.judges import check_judge_name

    check_judge_name(value)


def _check_attack(value: str) -> None:
    from orthopatch.evaluate.attacks import ATTACKS

    if value not in ATTACKS and not value.endswith((".yaml", ".yml", ".jsonl")):
        raise UserError(f"unknown attack family {value!r}; known: {', '.join(ATTACKS)} (or a .yaml/.jsonl file)")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # "all-linear" = every linear projection in the transformer blocks (PEFT's shorthand; the LM head is excluded).
    target_modules: list[str] | str = "all-linear"
    layers: list[int] | None = None  # restrict to these layer indices (PEFT layers_to_transform)


@dataclass
class TrainConfig:
    model: str | None = None  # HF id, local directory, or None/"embedded" for the embedded SmolLM2
    output: str = "runs/patch"
    # lora-*: LoRA adapters on a frozen base; full-*: every parameter. *-sft: refusal SFT; *-dpo: DPO on pairs.
    method: str = field(default="lora-sft", metadata={"choices": lambda: METHODS})
    # Registered dataset names (their train split; harmful sets get project-written refusal targets) or paths to
    # user JSONL files (trained on as given).
    data: list[str] = field(default_factory=lambda: ["advbench"])
    max_examples: int | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 2e-4
    epochs: int = 2
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    split_seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    log_every: int = 5
    checkpoint_every: int = 50  # batches between resumable checkpoints (0 = none)
    # Self-distillation retain term (a departure from "safety data only", so off by default): each step adds
    # retain_weight x KL(base || patched) over the prompt tokens of a batch of benign prompts from these datasets'
    # train splits, with the frozen base itself as the teacher (no external answers are needed).
    retain: list[str] = field(default_factory=list)
    retain_weight: float = 0.0
    retain_batch_size: int = 8
    # DPO (lora-dpo / full-dpo): chosen = the refusal target, rejected = the base model's own greedy answer.
    dpo_beta: float = 0.1
    dpo_rejected_tokens: int = 64
    init_patch: str | None = None  # lora-*: start from this patch's weights (keep training one patch)
    # Data mixing (the paper's expensive baseline practice): general examples make up this share of the training set
    # (0 = safety data only). General data: benign prompts of these registered sets' train splits, answered by the
    # base model itself (self-distillation; no instruction corpus ships offline), and/or user JSONL files as given.
    # Safety data augmentation: this share of the refusal examples wrapped in PyRIT train-split jailbreak templates.
    augment_templates: float = 0.0
    # Orthogonality by construction (LoRA only): a penalty on the energy of ΔW inside W0's top-k singular subspaces
    # (both sides), and/or keeping A's rows in the complement of W0's top-k right singular subspace (exact).
    ortho_weight: float = 0.0
    ortho_k: int = 32
    ortho_project: bool = False
    mix_general: float = 0.0
    general_data: list[str] = field(default_factory=lambda: ["chatterbot_prompts"])
    general_max_new_tokens: int = 64
    # LoRA only: save the patch with its update multiplied by this dose (chosen on validation data, e.g. by
    # `orthopatch select-scale` or a preset), so it applies at scale 1 everywhere, including after export or merge.
    scale: float = 1.0


@dataclass
class EvalConfig:
    model: str | None = None
    patch: str | None = None
    output: str = "runs/eval"
    split: str = "test"
    split_seed: int = 0
    harmful: list[str] = field(default_factory=lambda: ["harmbench"])  # direct requests
    # Jailbreak families (names from orthopatch.evaluate.attacks, or user .yaml/.jsonl files) wrapping the goals.
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS),
                               metadata={"check_each": _check_attack})
    attack_goals: str = "harmbench"  # a registered harmful dataset or a JSONL file of {"prompt": ...} lines
    # Harmful-but-borderline requests, reported apart from both safety and over-refusal ("NAME:SUBSET" selects).
    sensitive: list[str] = field(default_factory=lambda: ["donotanswer:human_chatbox",
                                                          "donotanswer:misinformation_harms"])
    benign: list[str] = field(default_factory=lambda: ["rho_overrefusal", "wsr_benign"])
    trivia: str | None = "trivia"
    gsm8k: str | None = "gsm8k_100"
    fact_pairs: str | None = "fact_pairs"
    perplexity: str | None = "book_cloze"
    kl: list[str] = field(default_factory=lambda: ["rho_overrefusal", "trivia"])
    drift: bool = True  # with a patch: regenerate the benign answers without it and compare
    # Per-set sample caps (None = the whole split); the defaults keep a CPU run to a few minutes.
    n_harmful: int | None = 50
    n_attack: int | None = 16  # goals per attack family
    n_sensitive: int | None = 20
    n_benign: int | None = 40
    n_trivia: int | None = 60
    n_gsm8k: int | None = 16
    n_fact_pairs: int | None = 60
    n_perplexity: int | None = 80
    n_kl: int | None = 40
    # Refusal judging reads the opening of an answer, so a short budget suffices (recorded with the results).
    max_new_tokens: int = 32
    trivia_max_new_tokens: int = 24
    gsm8k_max_new_tokens: int = 160
    attack_max_tokens: int | None = None  # prompt-token budget; None = the model's context - max_new_tokens
    batch_size: int = 16
    # "hf" (transformers, batched) or "vllm" (judged generations through vLLM, for large models on GPUs).
    engine: str = field(default="hf", metadata={"choices": lambda: ("hf", "vllm")})
    judge: str = field(default="strmatch-refusal", metadata={"check": _check_judge})
    extra_judges: list[str] = field(default_factory=list, metadata={"check_each": _check_judge})
    # lm-evaluation-harness tasks run on the (patched) model; lm_eval_include adds a directory of task YAMLs.
    lm_eval: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None
    lm_eval_limit: int | None = None
    patch_scale: float = 1.0
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_base_mismatch: bool = False
    show_text: bool = False  # print benign responses; harmful prompts and their responses are never printed


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


def _set(cfg: Any, dotted: str, value: Any, *, path: str | None = None, line: int | None = None) -> None:
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
    choices = metadata.get("choices")
    if choices is not None and value not in choices():
        raise UserError(f"unknown value {value!r}; choose one of: {', '.join(choices())}", path=path, line=line,
                        field=dotted)
    checks = [(metadata["check"], value)] if "check" in metadata else []
    checks += [(metadata["check_each"], v) for v in value] if "check_each" in metadata else []
    for check, item in checks:
        try:
            check(item)
        except UserError as error:
            raise UserError(error.message, path=path, line=line, field=dotted) from None
    setattr(target, leaf, value)


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


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
                preset: tuple[str, dict[str, Any]] | None = None) -> Any:
    """Build ``cls`` from its defaults, then a named ``preset`` (name, mapping), then the YAML file at ``path``, then
    ``key=value`` overrides."""
    cfg = cls()
    if preset is not None:
        for key, value in _flatten(preset[1]):
            _set(cfg, key, value, path=f"preset {preset[0]}")
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
        for key, value in _flatten(data):
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
            hint = _hint_for(cfg, key.strip())
            if hint is not None and _type_ok(raw, hint) and not _type_ok(value, hint):
                value = raw  # e.g. a model name that looks like a number
        _set(cfg, key.strip(), value, path="--set")
    return cfg


def _hint_for(cfg: Any, dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            return None
    return typing.get_type_hints(type(target)).get(leaf) if leaf in _fields(target) else None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
