"""Gate kinds of a selective patch: features (``hidden``, ``encoder``, ``tuned-encoder``, ``hf-classifier``,
``hf-guard``) and heads (``linear``, ``mlp``), each one module registered in :mod:`registry`; :class:`Gate` combines
them and reads and writes them."""

from orthopatch.patches.gates import (  # noqa: F401  (they register)
    classifier,
    encoder,
    generative_guard,
    hidden,
    linear,
    mlp,
    tuned_encoder,
)
from orthopatch.patches.gates.base import (
           GATE_CONFIG,
           GATE_TOKENIZER,
           GATE_WEIGHTS,
           Feature,
           Gate,
           GateInputs,
           Head,
           PromptReader,
)
from orthopatch.patches.gates.hidden import HiddenStates, pool
from orthopatch.patches.gates.linear import LinearHead
from orthopatch.patches.gates.registry import FEATURES, HEADS

__all__ = ["FEATURES", "GATE_CONFIG", "GATE_TOKENIZER", "GATE_WEIGHTS", "HEADS", "Feature", "Gate", "GateInputs",
           "Head", "HiddenStates", "LinearHead", "PromptReader", "pool"]
