"""Which registered sets play which part, in one place: the harmful requests a patch and its gate are trained on,
the benign contrast beside them, and the requests benign twins are written from."""

from __future__ import annotations

# Harmful training requests (train splits; validation splits to choose with): each a source of its own when a gate
# leaves one source out. HarmBench is evaluation only; its own validation split is a harmful source that no gate
# is fitted on.
HARMFUL_TRAINING = ("advbench", "donotanswer:discrimination_exclusion_toxicity_hateful_offensive",
                    "donotanswer:information_hazard", "donotanswer:malicious_uses")
# More real harmful sources for a gate (measured as sources of their own): StrongREJECT and UncensorBench.
HARMFUL_MORE = ("strongreject", "uncensorbench")
# Harmful requests no training split holds, read only to choose (validation) and to evaluate (test).
HARMFUL_VALIDATION_ONLY = ("harmbench_official:standard", "harmbench_official:contextual")
# Benign contrast: project-written look-alikes, casual chit-chat and Do-Not-Answer's borderline areas (requests to
# answer with care).
CONTRAST = ("lookalikes", "chatterbot_prompts", "donotanswer:human_chatbox", "donotanswer:misinformation_harms")
# The requests benign twins and rewrites are written from (each in its own split).
TWIN_ORIGINS = HARMFUL_TRAINING + HARMFUL_MORE + HARMFUL_VALIDATION_ONLY
