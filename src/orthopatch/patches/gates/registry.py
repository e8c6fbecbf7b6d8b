"""The gate kinds: what a gate reads from a prompt (features) and how it turns that into one score (heads). A new
kind is one module here that registers its class; :mod:`orthopatch.patches.gates` imports them all."""

from __future__ import annotations

from typing import Any

FEATURES: dict[str, Any] = {}  # kind -> Feature subclass
HEADS: dict[str, Any] = {}  # kind -> Head subclass


def register_feature(cls):
    FEATURES[cls.kind] = cls
    return cls


def register_head(cls):
    HEADS[cls.kind] = cls
    return cls
