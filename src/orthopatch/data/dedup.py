"""Exact and near-duplicate matching of prompts, for decontamination.

Two prompts are duplicates when their normalised text is equal, and near-duplicates when their sets of content words
(lower-cased, punctuation and a few function words removed) overlap by at least ``NEAR`` (Jaccard): the same request
copied from one benchmark into another with a word changed or its punctuation redone. An inverted index over content
words keeps the comparison to the prompts that share a word.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable


def words_of(text: str) -> frozenset[str]:
    return frozenset(text.split())


NEAR = 0.8
MIN_WORDS = 4  # shorter prompts match exactly or not at all (two short requests share most words by chance)
_WORD = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = words_of("a an the to of and or in on for with how what is are be i me my you your it that this "
                           "can do does should would could will")


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key used for deduplication and split assignment."""
    return " ".join(text.lower().split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS)


class DuplicateIndex:
    """Prompts to match against: ``matches(text)`` is true for an exact or near duplicate of any of them."""

    def __init__(self, prompts: Iterable[str], near: float = NEAR) -> None:
        self.near = near
        self.exact: set[str] = set()
        self.words: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = defaultdict(list)
        for prompt in prompts:
            self.exact.add(normalise(prompt))
            words = content_words(prompt)
            if len(words) >= MIN_WORDS:
                for word in words:
                    self.postings[word].append(len(self.words))
                self.words.append(words)

    def matches(self, text: str) -> bool:
        if normalise(text) in self.exact:
            return True
        words = content_words(text)
        if len(words) < MIN_WORDS:
            return False
        shared: dict[int, int] = defaultdict(int)
        for word in words:
            for index in self.postings.get(word, ()):
                shared[index] += 1
        return any(n / (len(words) + len(self.words[i]) - n) >= self.near for i, n in shared.items())
