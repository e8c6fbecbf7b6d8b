"""The training run's configuration: every field with its default, its valid range and, for settings groups, the
checks of options that only make sense together (see :mod:`orthopatch.config` for how configs are read)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from orthopatch.config import CAP, DTYPES, POSITIVE, num
from orthopatch.data.policy import CONTRAST, HARMFUL_MORE, HARMFUL_TRAINING, HARMFUL_VALIDATION_ONLY
from orthopatch.errors import UserError

METHODS = ("lora-sft", "full-sft", "lora-dpo", "full-dpo")
POOLINGS = ("last", "mean", "last+mean")  # the hidden-state gate's (patches.gates.base.POOLINGS; torch-free here)
# the gate kinds a config may name, checked when it is read (patches.gates.FEATURES and HEADS; a test keeps them equal)
FEATURE_KINDS = ("hidden", "encoder", "tuned-encoder", "hf-classifier", "hf-guard")
NEEDS_DIRECTORY = ("hf-classifier", "hf-guard")  # kind:DIR, a user's model
HEAD_KINDS = ("linear", "mlp")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
SELECTIVE = {"data": list(HARMFUL_TRAINING), "shuffle": True, "max_examples": 256, "epochs": 1, "group_by_length": True}
SELECTIVE_RETAIN = {"data": list(CONTRAST), "weight": 10.0}
# A fast gate: fitted on the training sources against look-alike, casual and borderline prompts; its features (one
# layer's or all candidate layers' hidden states, the all-MiniLM-L6-v2 sentence encoder, or both), layer, pooling
# and penalty chosen out of source (leave one source out, the one-standard-error rule). Linear heads only: refitting
# MLP heads once per source costs more than the recipe's whole budget on a CPU.
SELECTIVE_FAST_GATE = {"enabled": True, "selection": "out-of-source",
                       "features": ["hidden", "hidden:all", "encoder", "hidden+encoder"]}
# The same choice over more candidates: pooled at the last token, the mean or both, each fitted without and with the
# harmful and benign prompts rephrased (tense, person, register, fiction, role-play, multi-step), kept only where
# they help on held-out sources.
SELECTIVE_REPHRASED_GATE = {**SELECTIVE_FAST_GATE, "poolings": list(POOLINGS), "rephrase": 0.5, "extra": ["rephrase"]}
# The recipe's gate, taught intent rather than topic: six harmful sources (HarmBench's own validation split as a
# seventh, never fitted on), a benign twin of every harmful request, rewrites into other tenses, persons and
# registers, obfuscated copies of both classes, the project's varied benign prompts among the contrast; the
# fine-tuned encoder, the base's hidden states, or both, chosen out of source (four folds of sources), no candidate
# that cannot tell the validation requests from their twins. A gate fitted on other topics than its harmful
# requests' learns the topics; twins on the same topics leave it intent to learn.
SELECTIVE_GATE = {**SELECTIVE_FAST_GATE, "harmful": [*HARMFUL_TRAINING, *HARMFUL_MORE],
                  "benign": [*CONTRAST, "varied_benign"], "validation_harmful": list(HARMFUL_VALIDATION_ONLY),
                  "twins": 1.0, "rewrites": 0.5, "obfuscate": 0.3,
                  "features": ["hidden:all", "tuned-encoder", "hidden:all+tuned-encoder"], "min_twin_auroc": 0.85}
# Named training recipes (`orthopatch train --preset NAME`), applied under --config and --set. Each was chosen or
# measured by a study on validation splits; what they measured on test splits is in docs/results/.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The selective patch, the family `orthopatch selective` chose on validation: refusal SFT on varied harmful
    # requests behind the gate above, so that the patch acts only on prompts the gate flags.
    "selective": {**SELECTIVE, "gate": SELECTIVE_GATE},
    # The same patch behind the fast gate: half the training time, but the gate reads topic (it flags benign twins of
    # harmful requests) and lets more rephrased requests through.
    "selective-fast": {**SELECTIVE, "gate": SELECTIVE_FAST_GATE},
    # The fast gate chosen among more poolings and with the rephrasings: a trade against it, not a better gate.
    "selective-rephrased": {**SELECTIVE, "gate": SELECTIVE_REPHRASED_GATE},
    # The other two selective families the study weighs: the fast gate in front of a contrastive patch (a KL retain
    # term on the benign contrast prompts), and the contrastive patch without a gate.
    "selective-cascade": {**SELECTIVE, "retain": SELECTIVE_RETAIN, "gate": SELECTIVE_FAST_GATE},
    "selective-contrastive": {**SELECTIVE, "retain": SELECTIVE_RETAIN},
    # What `orthopatch levers` chose for SmolLM2-135M: a patch on the MLP up-projections alone, at the dose 1.5. The
    # dose is that model's; rerun `select-scale` for another.
    "small-model": {"max_examples": 64, "lora": {"target_modules": ["up_proj"]}, "scale": 1.5},
}


@dataclass
class LoraSettings:
    r: int = num(8, **POSITIVE)  # the adapter's rank
    alpha: int = num(16, gt=0)  # the update is scaled by alpha / r
    dropout: float = num(0.05, ge=0, lt=1)  # dropout on the adapter's input while training
    # "all-linear" = every linear projection in the transformer blocks (PEFT's shorthand; the LM head is excluded).
    target_modules: list[str] | str = "all-linear"
    layers: list[int] | None = num(None, ge=0)  # restrict to these layer indices (PEFT layers_to_transform)


@dataclass
class RetainSettings:
    """Self-distillation retain term (a departure from "safety data only", so off by default): each step adds
    ``weight`` x KL(base || patched) over the prompt tokens of a batch of benign prompts from these sets' train splits
    (registered names, ``NAME:SUBSET``), with the frozen base itself as the teacher (no external answers needed)."""

    data: list[str] = field(default_factory=list)  # benign prompt sets (registered names or JSONL files)
    weight: float = num(0.0, ge=0)  # the KL term's weight in the loss (0 = off)
    batch_size: int = num(8, **POSITIVE)  # benign prompts per step
    # Add copies of this share of the retain prompts wrapped in PyRIT train-split jailbreak templates ("adversarial
    # benign": benign requests in jailbreak form, which keep a patch from refusing the form rather than the request).
    wrap: float = num(0.0, ge=0, le=1)

    def check(self) -> None:
        if self.weight > 0 and not self.data:
            raise UserError("a retain weight needs retain data (retain.data: benign prompt sets)", field="data")


@dataclass
class GateSettings:
    """A selective patch's gate (off unless ``enabled``): a class-balanced, L2-regularised probe (``heads``) on
    features of each prompt (``features``: by default the frozen base's hidden states), fitted after training on
    ``harmful`` against ``benign`` prompts (train splits, plus copies of a ``wrap`` share of each wrapped in
    train-split jailbreak templates and of a ``rephrase`` share of the harmful ones in the project's rephrasing
    templates). Its features, layer, pooling, head and penalty are chosen on the same sets' validation splits plus
    ``validation_benign`` (validation splits of the over-refusal sets), in source or by leaving one source out at a
    time (``selection``), and its threshold is the highest that flags ``recall`` of the harmful validation prompts.
    The patch then acts only on flagged prompts; the others run on the base unchanged."""

    enabled: bool = False  # fit a gate after training (a selective patch)
    # the harmful sets the gate is fitted on (train splits) and chosen with (validation splits)
    harmful: list[str] = field(default_factory=lambda: list(HARMFUL_TRAINING))
    # the benign sets beside them: registered names or JSONL files of prompts
    benign: list[str] = field(default_factory=lambda: list(CONTRAST))
    # harmful sets read only to choose (their validation splits; e.g. HarmBench's own): a source no gate is fitted on
    validation_harmful: list[str] = field(default_factory=list)
    # benign sets read only to choose (their validation splits): prompts no gate is fitted on
    validation_benign: list[str] = field(default_factory=lambda: ["rho_overrefusal", "wsr_benign"])
    # benign twins written from this share of the harmful prompts (the same activity, a harmless intent; twin
    # generators of the split: validation twins come from generators never fitted on)
    twins: float = num(0.0, ge=0, le=1)
    # this share of the harmful prompts rewritten as plain requests in another tense, person or register
    rewrites: float = num(0.0, ge=0, le=1)
    # copies of this share of the prompts (harmful and benign alike) spelt in leetspeak, spacing, homoglyphs or
    # misspellings (the kinds of the split)
    obfuscate: float = num(0.0, ge=0, le=1)
    wrap: float = num(0.3, ge=0, le=1)  # copies of this share of the prompts wrapped in jailbreak templates
    wrap_benign: bool = True  # wrap benign training prompts too ("adversarial benign"); off: only harmful ones
    wrap_max_chars: int = num(800, **POSITIVE)  # longer training renderings are left out (they cost most to read)
    # validation keeps long renderings (persona and role-play templates run to thousands of characters): a gate
    # that pools over the whole prompt can lose the request in them, and only a validation that has them sees it
    validation_wrap_max_chars: int = num(800, **POSITIVE)
    # a share of the harmful prompts copied into the project's rephrasings (tense, person, register, nested fiction,
    # role-play, multi-step; train-split templates to fit, validation-split ones to choose); off by default: measured
    # with 0.5, the gates it produced flagged more benign-sensitive prompts (docs/results/out-of-distribution.md)
    rephrase: float = num(0.0, ge=0, le=1)
    # rephrase the same share of the benign prompts too (as wrap_benign does for jailbreak templates): with harmful
    # copies alone the form itself is a harm signal (validation: 65% of benign prompts in those forms flagged, 17% with)
    rephrase_benign: bool = True
    # copies of this share of the prompts (harmful and benign) read without the chat template, and the passages of
    # the raw-text sets ``raw_text`` as benign rows: a gate also decides on raw text (perplexity passes, a completion
    # endpoint), which read unformatted lies far from every chat-formatted prompt it was fitted on
    raw: float = num(0.0, ge=0, le=1)
    raw_text: list[str] = field(default_factory=list)
    # how the gate reads an input without the chat template's tokens: "as-chat", as the user message of a chat
    # prompt (the prompts it is fitted on: the recipe's gate flagged 29 of 40 raw book passages read as they are,
    # at most one of 40 read as a message), or "as-is" (the text as it is)
    unformatted: str = field(default="as-chat", metadata={"choices": lambda: ("as-chat", "as-is")})
    # training data the selection may add: benign set names, and "rephrase" for the rephrased copies.
    # Their validation prompts always take part, so every candidate probe is tried without and with them and judged
    # on the same sources; data that does not help on sources held out of fitting is left out.
    extra: list[str] = field(default_factory=list)
    # "in-source": choose layer, pooling and penalty by the benign validation prompts flagged (the sources the probe
    # was fitted on); "out-of-source": by the error on sources left out of fitting. Either way gate.json reports the
    # chosen probe's error in and out of source.
    selection: str = field(default="in-source", metadata={"choices": lambda: ("in-source", "out-of-source")})
    # what the gate may read, each candidate tried: "hidden" (the base's hidden states, one candidate layer at a
    # time), "hidden:all" (all candidate layers together), "encoder" (all-MiniLM-L6-v2 sentence embeddings of the
    # prompt's text; "encoder:DIR" another encoder), "hf-classifier:DIR" (a user's guard model), or kinds joined
    # by "+" (features concatenated, e.g. "hidden+encoder")
    features: list[str] = field(default_factory=lambda: ["hidden"], metadata={"check_each": lambda v: _features(v)})
    # the head on the features, each tried: "linear" (logistic regression) or "mlp" (one hidden layer)
    heads: list[str] = field(default_factory=lambda: ["linear"],
                             metadata={"check_each": lambda v: _choice(v, HEAD_KINDS)})
    layers: list[float] = num(factory=lambda: [0.4, 0.55, 0.7, 0.85], gt=0, lt=1)  # fractions of the depth
    # how hidden states are pooled over the prompt's tokens, each tried: the last token, the mean, or both
    poolings: list[str] = field(default_factory=lambda: ["last", "mean"],
                                metadata={"check_each": lambda v: _choice(v, POOLINGS)})
    l2: list[float] = num(factory=lambda: [1e-3, 1e-1], gt=0)  # the head's penalties, each tried
    recall: float = num(0.95, gt=0, le=1)  # the threshold flags this share of the harmful validation prompts
    # the operating point as a benign budget instead: the lowest threshold that flags at most this share of the
    # benign validation prompts (None: the threshold keeping ``recall`` of the harmful ones)
    max_benign_rate: float | None = num(None, ge=0, lt=1)
    # a candidate whose AUROC between the harmful validation requests and their benign twins is below this is not
    # chosen, whatever its error elsewhere (unless none reaches it: then the highest twin AUROC wins)
    min_twin_auroc: float = num(0.0, ge=0, le=1)
    max_per_set: int | None = num(150, **CAP)  # prompts per set and split, for the cost of reading features
    batch_size: int = num(16, **POSITIVE)  # prompts per forward pass when reading features

    @property
    def fitting_benign(self) -> list[str]:
        """The benign sets whose train splits the gate may be fitted on: ``benign`` and those named in ``extra``."""
        return self.benign + [name for name in self.extra if name != "rephrase" and name not in self.benign]

    def check(self) -> None:
        if self.raw > 0 and self.unformatted == "as-chat":
            raise UserError("unformatted copies read as chat messages are the prompts again; fit on them as they "
                            "are with gate.unformatted: as-is", field="raw")
        if "rephrase" in self.extra and self.rephrase == 0:
            raise UserError("extra names the rephrased copies; give them a share (gate.rephrase > 0)", field="extra")
        if self.extra and self.selection != "out-of-source":
            raise UserError("extra data is kept only where it helps on held-out sources; it needs "
                            "selection: out-of-source", field="extra")


def _features(value: str) -> None:
    """``kind``, ``kind:argument`` or such parts joined by ``+``, each kind a registered one."""
    for part in value.split("+"):
        kind, _, argument = part.partition(":")
        _choice(kind, FEATURE_KINDS)
        if kind in NEEDS_DIRECTORY and not argument:
            raise UserError(f"{kind} reads a model of yours: give its directory as {kind}:DIR")


def _choice(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown value {value!r}; choose one of: {', '.join(allowed)}")


@dataclass
class OrthoSettings:
    """Orthogonality by construction (LoRA only): a penalty on the energy of ΔW inside W0's top-k singular subspaces
    (both sides), and/or keeping A's rows in the complement of W0's top-k right singular subspace (exact)."""

    weight: float = num(0.0, ge=0)  # the penalty's weight (0 = off)
    k: int = num(32, **POSITIVE)  # how many of W0's top singular directions
    project: bool = False  # keep the update out of them exactly

    @property
    def active(self) -> bool:
        return self.weight > 0 or self.project


@dataclass
class DpoSettings:
    """DPO (lora-dpo / full-dpo): chosen = the refusal target, rejected = the base model's own greedy answer."""
    beta: float = num(0.1, gt=0)  # DPO's temperature: how far the patch may move from the base
    rejected_tokens: int = num(64, **POSITIVE)  # length of the base's own answers used as rejected


@dataclass
class TrainConfig:
    model: str | None = None  # HF id, local directory, or None/"embedded" for the embedded SmolLM2
    output: str = "runs/patch"  # the patch directory (never replaced without --overwrite)
    # lora-*: LoRA adapters on a frozen base; full-*: every parameter. *-sft: refusal SFT; *-dpo: DPO on pairs.
    method: str = field(default="lora-sft", metadata={"choices": lambda: METHODS})
    # Registered dataset names (their train split; harmful sets get project-written refusal targets; NAME:SUBSET
    # selects e.g. a Do-Not-Answer risk area) or paths to user JSONL files (trained on as given).
    data: list[str] = field(default_factory=lambda: ["advbench"])
    max_examples: int | None = num(None, **CAP)  # training examples at most (None: all)
    # Shuffle the records of all sources (seeded) before ``max_examples`` cuts them, so a cap samples every source.
    shuffle: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = num(2e-4, gt=0)  # the learning rate (AdamW)
    epochs: int = num(2, **POSITIVE)
    batch_size: int = num(8, **POSITIVE)  # examples per optimizer step (before grad_accum)
    # Batches of similar lengths (less padding, faster; the order stays seeded-random), for training and retain data.
    group_by_length: bool = False
    grad_accum: int = num(1, **POSITIVE)  # batches per optimizer step
    max_length: int = num(256, **POSITIVE)  # tokens per example (longer ones are cut) and per packed row
    # SFT: lay each batch's examples end to end in rows of max_length tokens (no padding; same loss); models that
    # cannot keep packed examples apart (checked on the model) train on padded batches.
    packing: bool = True
    scheduler: str = field(default="constant", metadata={"choices": lambda: SCHEDULERS})  # transformers' schedules
    warmup_ratio: float = num(0.0, ge=0, le=1)  # share of the steps spent warming the learning rate up
    weight_decay: float = num(0.0, ge=0)  # AdamW's
    max_grad_norm: float = num(1.0, ge=0)  # 0 = no clipping
    seed: int = num(0, ge=0)
    split_seed: int = num(0, ge=0)
    dtype: str = field(default="auto", metadata={"choices": lambda: DTYPES})  # auto: bf16 base on CUDA (LoRA)
    # bf16 autocast in the loop: auto = on a CUDA device that supports it, else no.
    mixed_precision: str = field(default="auto", metadata={"choices": lambda: ("auto", "no", "bf16")})
    device: str = "auto"
    trust_remote_code: bool = False
    log_every: int = num(5, **POSITIVE)  # optimizer steps between lines of train_log.jsonl
    checkpoint_every: int = num(50, ge=0)  # batches between resumable checkpoints (0 = none)
    retain: RetainSettings = field(default_factory=RetainSettings, metadata={"list_key": "data"})
    dpo: DpoSettings = field(default_factory=DpoSettings)
    init_patch: str | None = None  # lora-*: start from this patch's weights (keep training one patch)
    # Safety data augmentation: this share of the refusal examples wrapped in PyRIT train-split jailbreak templates.
    augment_templates: float = num(0.0, ge=0, le=1)
    ortho: OrthoSettings = field(default_factory=OrthoSettings)
    # Data mixing (the paper's expensive baseline practice): general examples make up this share of the training set
    # (0 = safety data only). General data: benign prompts of these registered sets' train splits, answered by the
    # base model itself (self-distillation; no instruction corpus ships offline), and/or user JSONL files as given.
    mix_general: float = num(0.0, ge=0, lt=1)
    general_data: list[str] = field(default_factory=lambda: ["chatterbot_prompts"])
    general_max_new_tokens: int = num(64, **POSITIVE)  # the base's answers to general prompts, at most
    # LoRA only: save the patch with its update multiplied by this dose (chosen on validation data, e.g. by
    # `orthopatch select-scale` or a preset), so it applies at scale 1 everywhere, including after export or merge.
    scale: float = num(1.0, gt=0)
    gate: GateSettings = field(default_factory=GateSettings)

    # Spellings of earlier versions, still read from YAML files and --set.
    ALIASES: typing.ClassVar[dict[str, str]] = {
        "retain_weight": "retain.weight", "retain_batch_size": "retain.batch_size", "ortho_weight": "ortho.weight",
        "ortho_k": "ortho.k", "ortho_project": "ortho.project", "dpo_beta": "dpo.beta",
        "dpo_rejected_tokens": "dpo.rejected_tokens"}

    @property
    def is_lora(self) -> bool:
        return self.method.startswith("lora-")

    @property
    def objective(self) -> str:
        """The main objective's name: ``sft`` or ``dpo``."""
        return self.method.split("-", 1)[1]

    def check(self) -> None:
        """Options that only make sense together (each settings group checks its own)."""
        if self.scale != 1.0 and not self.is_lora:
            raise UserError("scale bakes a dose into a LoRA patch; it needs a lora-* method", field="scale")
        if self.init_patch and not self.is_lora:
            raise UserError("init_patch continues a LoRA patch; it needs a lora-* method", field="init_patch")
        if self.mix_general and self.objective != "sft":
            raise UserError("mix_general is the general share of an SFT training set; it needs an *-sft method",
                            field="mix_general")
        if self.gate.enabled and not self.is_lora:
            raise UserError("a gate switches a LoRA patch on and off per prompt; it needs a lora-* method",
                            field="gate.enabled")
        if self.ortho.active and not self.is_lora:
            raise UserError("the orthogonality lever acts on LoRA factors; it needs a lora-* method",
                            field="ortho.weight" if self.ortho.weight > 0 else "ortho.project")
