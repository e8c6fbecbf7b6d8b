"""orthopatch: train, evaluate, analyse and manage LoRA safety patches for Hugging Face causal LMs.

The command line (``orthopatch --help``) is the main interface; the recipes in :mod:`orthopatch.recipes` and the
components under data/, models/, train/, evaluate/, analysis/, patches/ and report/ are importable as a library.
"""

__version__ = "0.1.0"
