"""What a server serves: the base under one model id and each patch under its own, and the per-request routing.

Every patch is loaded as its own PEFT adapter on one copy of the base (verified first: hashes, base fingerprint,
gate files), each with a :class:`RowMask`, so rows asking for different patches, or for the base, share a batch.
Before a batch's first token, :meth:`ModelSet.route` decides per row: the base gets no update; an ungated patch
gets its update; a gated patch gets it only if its gate, reading that row's prompt (the base's hidden states, its
text, or both), flags it. In upstream mode only the base's layers up to the deepest gate are loaded (none for gates
that read text alone), to compute the same decisions.
"""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from orthopatch.errors import UserError
from orthopatch.models.embedded import EMBEDDED_ALIASES
from orthopatch.models.generation import left_pad, unpadded
from orthopatch.models.loading import fingerprint, load_model, load_tokenizer, resolve_model_path
from orthopatch.patches.gate import Gate, GateInputs, gate_inputs, score_features
from orthopatch.patches.gates.unformatted import read_unformatted
from orthopatch.patches.manifest import verify_patch
from orthopatch.patches.routing import RowMask
from orthopatch.patches.stack import attach_patches, parse_patch_spec
from orthopatch.serve.config import ServeConfig

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]*")


@dataclass
class ServedPatch:
    name: str
    path: str
    scale: float
    manifest: dict[str, Any]
    gate: Gate | None  # None: ungated (or served with --ungated)
    rows: RowMask | None  # None in upstream mode (the upstream applies the update)

    def card(self, parent: str, ungated: bool) -> dict[str, Any]:
        gate = None if self.gate is None else {**self.gate.summary(), "describe": self.gate.describe()}
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "orthopatch", "parent": parent,
                "root": parent, "orthopatch": {"kind": self.manifest.get("kind"), "path": self.path,
                                               "scale": self.scale, "gate": gate,
                                               "gate_ignored": ungated and self.manifest.get("kind") == "gated-lora",
                                               "adapter_sha256": self.manifest["files"].get(
                                                   "adapter_model.safetensors")}}


def parse_patch_arg(spec: str) -> tuple[str, str, float]:
    """``NAME=DIR`` or ``NAME=DIR@SCALE``."""
    name, eq, rest = spec.partition("=")
    if not eq or not rest or not MODEL_ID.fullmatch(name):
        raise UserError(f"give NAME=DIR or NAME=DIR@SCALE with a plain name, not {spec!r}", field="--patch")
    path, scale = parse_patch_spec(rest)
    return name, path, scale


def base_model_id(cfg: ServeConfig) -> str:
    if cfg.served_model_name:
        return cfg.served_model_name
    return EMBEDDED_ALIASES[1] if cfg.model is None or cfg.model in EMBEDDED_ALIASES else cfg.model


class ModelSet:
    def __init__(self, base_id: str, model, tokenizer, patches: dict[str, ServedPatch], ungated: bool) -> None:
        self.base_id, self.model, self.tokenizer, self.patches = base_id, model, tokenizer, patches
        self.ungated = ungated
        # fast tokenizers may raise "Already borrowed" when two threads use one at once: the handlers encode on
        # the server's loop while the engine decodes on its thread
        self.tokenizer_lock = threading.Lock()
        config = getattr(model, "config", None)
        self.context_length: int | None = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)

    def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        with self.tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def ids(self) -> list[str]:
        return [self.base_id, *self.patches]

    def cards(self) -> list[dict[str, Any]]:
        base = {"id": self.base_id, "object": "model", "created": 0, "owned_by": "orthopatch", "parent": None,
                "root": self.base_id}
        return [base, *(p.card(self.base_id, self.ungated) for p in self.patches.values())]

    def masks(self) -> list[RowMask]:
        return [p.rows for p in self.patches.values() if p.rows is not None]

    def flags(self, routes: list[dict[str, Any]]) -> list[torch.Tensor]:
        """Per patch with a row mask (the order of :meth:`masks`): which rows get its update."""
        return [torch.tensor([r["patch"] == p.name and r["applied"] for r in routes], dtype=torch.bool)
                for p in self.patches.values() if p.rows is not None]

    def gate_of(self, name: str) -> Gate | None:
        patch = self.patches.get(name)
        return None if patch is None else patch.gate

    def gate_layers(self, wanted: list[str]) -> list[int]:
        """The layers whose hidden states the gates of these rows read."""
        return sorted({layer for gate in map(self.gate_of, wanted) if gate is not None for layer in gate.layers})

    def route(self, wanted: list[str], prompt_ids: list[list[int]]) -> list[dict[str, Any]]:
        """Per row, before its first token: which patch acts. The gates read the base's hidden states of their
        rows' prompts from a partial forward pass of their own (upstream mode; the local engine reads them from the
        prefill itself, :meth:`route_from_features`)."""
        gated = [i for i, name in enumerate(wanted) if self.gate_of(name) is not None]
        values = self.scores_from_own_pass([wanted[i] for i in gated], [prompt_ids[i] for i in gated])
        scores = dict(zip(gated, values, strict=True))
        return [self._route(name, scores.get(i)) for i, name in enumerate(wanted)]

    def scores_from_own_pass(self, names: list[str], prompt_ids: list[list[int]]) -> list[float]:
        """Each row's score under its (gated) patch's gate from a partial pass of the base of its own (none for
        gates that read only text: in upstream mode no layer of the base is loaded for them). Gates that read
        unformatted input as a chat message and gates that read it as it is see their rows apart."""
        out = [0.0] * len(names)
        groups: dict[Any, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(self.gate_of(name).wrap, []).append(index)
        inner = None if self.model is None else getattr(self.model, "get_base_model", lambda: self.model)()
        device = torch.device("cpu") if inner is None else next(inner.parameters()).device
        for wrap, rows in groups.items():
            gates = [self.gate_of(names[i]) for i in rows]
            layers = sorted({layer for gate in gates for layer in gate.layers})
            input_ids, attention = left_pad([prompt_ids[i] for i in rows], self.tokenizer.pad_token_id, device)
            if inner is None:
                inputs = GateInputs(*read_unformatted(wrap, input_ids, attention))
            else:
                switched_off = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else \
                    nullcontext()
                with switched_off:
                    inputs = gate_inputs(inner, input_ids, attention, layers, wrap)
            for index, score in zip(rows, score_features(gates, inputs), strict=True):
                out[index] = score
        return out

    def route_from_features(self, wanted: list[str], inputs: GateInputs) -> list[dict[str, Any]]:
        """The same decisions from hidden states captured in a forward pass in which the gated rows ran on the
        base (their patches held off until decided). A row of unformatted text whose gate reads it as a chat
        message is not what that pass read: its gate reads it in a pass of its own."""
        rows = unpadded(inputs.input_ids, inputs.attention)
        gated = [i for i, name in enumerate(wanted) if self.gate_of(name) is not None]
        own = [i for i in gated if (wrap := self.gate_of(wanted[i]).wrap) is not None and wrap.is_raw(rows[i])]
        shared = [i for i in gated if i not in set(own)]
        scores: dict[int, float] = {}
        if shared:
            values = score_features([self.gate_of(wanted[i]) for i in shared], inputs.rows(torch.tensor(shared)))
            scores.update(zip(shared, values, strict=True))
        if own:
            values = self.scores_from_own_pass([wanted[i] for i in own], [rows[i] for i in own])
            scores.update(zip(own, values, strict=True))
        return [self._route(name, scores.get(i)) for i, name in enumerate(wanted)]

    def provisional(self, wanted: list[str]) -> list[dict[str, Any]]:
        """Routes before any gate has decided: gated rows on the base, the rest as they will stay."""
        return [self._route(name, None) for name in wanted]

    def _route(self, name: str, score: float | None) -> dict[str, Any]:
        """A gated row without a score yet is held on the base (the provisional route of its first pass)."""
        patch = self.patches.get(name)
        if patch is None:
            return {"patch": None, "applied": False, "gate": None}
        if patch.gate is None:
            return {"patch": name, "applied": True, "gate": None}
        if score is None:
            return {"patch": name, "applied": False, "gate": None}
        flagged = score >= patch.gate.threshold
        return {"patch": name, "applied": flagged, "gate": {"score": score, "threshold": patch.gate.threshold,
                                                            "flagged": flagged, "layer": patch.gate.layer}}


def _patch_specs(cfg: ServeConfig, base_id: str) -> list[tuple[str, str, float]]:
    specs = [parse_patch_arg(s) for s in cfg.patches]
    names = [base_id] + [name for name, _, _ in specs]
    if len(set(names)) != len(names):
        raise UserError(f"model ids must be distinct (the base is {base_id!r})", field="--patch")
    return specs


def load_local(cfg: ServeConfig) -> ModelSet:
    """The base and every patch on one model, for serving in this process."""
    base_id = base_model_id(cfg)
    specs = _patch_specs(cfg, base_id)
    model, tokenizer, info = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                        trust_remote_code=cfg.trust_remote_code)
    patches: dict[str, ServedPatch] = {}
    if specs:
        model, manifests = attach_patches(model, [(path, scale) for _, path, scale in specs], info.fingerprint,
                                          gates=False)
        for index, ((name, path, scale), manifest) in enumerate(zip(specs, manifests, strict=True)):
            gate = Gate.load(path) if manifest.get("kind") == "gated-lora" and not cfg.ungated else None
            patches[name] = ServedPatch(name, path, scale, manifest, gate, RowMask(model, f"patch{index}"))
    return ModelSet(base_id, model, tokenizer, patches, cfg.ungated)


def load_gates_only(cfg: ServeConfig) -> ModelSet:
    """Upstream mode: the tokenizer, the patches' gates and the base's first layers up to the deepest gate."""
    base_id = base_model_id(cfg)
    specs = _patch_specs(cfg, base_id)
    _, path = resolve_model_path(cfg.model)
    base_fingerprint = fingerprint(path)
    manifests = [verify_patch(p, base_fingerprint) for _, p, _ in specs]
    gates = [Gate.load(p) if m.get("kind") == "gated-lora" else None for (_, p, _), m in zip(specs, manifests,
                                                                                            strict=True)]
    depth = max((g.layer for g in gates if g is not None), default=0)  # 0: the gates read only text
    model = None
    if depth:
        model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code,
                           num_hidden_layers=depth)[0]
    tokenizer = load_tokenizer(path, cfg.trust_remote_code)
    patches = {name: ServedPatch(name, p, scale, m, gate, None)
               for (name, p, scale), m, gate in zip(specs, manifests, gates, strict=True)}
    return ModelSet(base_id, model, tokenizer, patches, ungated=False)
