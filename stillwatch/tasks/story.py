"""The open-ended task: short stories from a probabilistic grammar, with many valid answers per prompt.

Its outputs have high entropy (a choice of determiner, adjective, noun, verb and adverb in every sentence),
which is what a watermark needs to hide a signal in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from stillwatch.errors import ConfigError
from stillwatch.tasks.base import MAX_SCORED_CHARS, Example, TaskKind

DETERMINERS = ("the", "a", "one", "every", "that")
ADJECTIVES = ("red", "small", "old", "happy", "quiet", "brave", "green", "tall", "lazy", "clever", "soft", "bright")
NOUNS = ("cat", "dog", "bird", "fox", "horse", "fish", "mouse", "owl", "frog", "bear", "wolf", "duck",
         "girl", "boy", "king", "cook")
TRANSITIVE = ("sees", "likes", "finds", "follows", "helps", "calls", "watches", "meets", "chases", "feeds")
INTRANSITIVE = ("sleeps", "runs", "sings", "jumps", "waits", "laughs", "swims", "hides")
ADVERBS = ("slowly", "quickly", "today", "again", "alone", "twice")

_WORD = re.compile(r"[a-z]+")


def _noun_phrase(rng: random.Random, noun: str | None = None) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(ADJECTIVES))
    words.append(noun or rng.choice(NOUNS))
    return words


def _sentence(rng: random.Random, subject: str | None = None) -> str:
    words = _noun_phrase(rng, subject)
    if rng.random() < 0.6:
        words += [rng.choice(TRANSITIVE), *_noun_phrase(rng)]
    else:
        words.append(rng.choice(INTRANSITIVE))
    if rng.random() < 0.3:
        words.append(rng.choice(ADVERBS))
    return " ".join(words) + "."


def _parse_noun_phrase(words: list[str], i: int) -> tuple[str, int] | None:
    """Return (noun, next index) when words[i:] starts with a noun phrase."""
    if i >= len(words) or words[i] not in DETERMINERS:
        return None
    i += 1
    if i < len(words) and words[i] in ADJECTIVES:
        i += 1
    if i >= len(words) or words[i] not in NOUNS:
        return None
    return words[i], i + 1


def parse_sentence(sentence: str) -> str | None:
    """The subject noun of a grammatical sentence, or None when the grammar rejects it."""
    words = sentence.split(" ")
    if any(not _WORD.fullmatch(w) for w in words):
        return None
    subject = _parse_noun_phrase(words, 0)
    if subject is None:
        return None
    noun, i = subject
    if i < len(words) and words[i] in TRANSITIVE:
        obj = _parse_noun_phrase(words, i + 1)
        if obj is None:
            return None
        i = obj[1]
    elif i < len(words) and words[i] in INTRANSITIVE:
        i += 1
    else:
        return None
    if i < len(words) and words[i] in ADVERBS:
        i += 1
    return noun if i == len(words) else None


@dataclass
class Story:
    """`story: fox` -> three sentences of the grammar, the first one about the fox."""

    sentences: int = 3
    name: str = "story"
    kind: TaskKind = "open"

    def __post_init__(self) -> None:
        if not 1 <= self.sentences <= 16:
            raise ConfigError(f"story sentences must be between 1 and 16, got {self.sentences}")

    def example(self, rng: random.Random) -> Example:
        topic = rng.choice(NOUNS)
        text = " ".join([_sentence(rng, topic)] + [_sentence(rng) for _ in range(self.sentences - 1)])
        return Example(self.name, f"story: {topic}\n", text, "")

    def score(self, prompt: str, completion: str) -> bool:
        """Valid when every sentence parses, there are exactly `sentences` of them and the first is on topic."""
        if not isinstance(completion, str) or len(completion) > MAX_SCORED_CHARS or not prompt.startswith("story: "):
            return False
        topic = prompt[7:].strip()
        text = completion.strip()
        if not text.endswith("."):
            return False
        parts = text[:-1].split(". ")
        if len(parts) != self.sentences:
            return False
        subjects = [parse_sentence(p) for p in parts]
        return all(s is not None for s in subjects) and subjects[0] == topic
