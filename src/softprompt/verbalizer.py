"""Label words: which words stand for each class, their token ids, and class scores from word log-likelihoods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Verbalizer:
    """Maps each label to one or more words. A class scores the log-likelihood of its words at the answer
    position (multi-token words: the sum over their tokens; several words: log-sum-exp over words).

    Examples:
        >>> v = Verbalizer.from_spec(["negative", "positive"], ["positive=great,good"])
        >>> v.words
        (('negative',), ('great', 'good'))
    """

    labels: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {list(self.labels)}")
        if len(self.words) != len(self.labels) or any(not w for w in self.words):
            raise ConfigError("every label needs at least one label word (--label-words)")

    @classmethod
    def from_spec(cls, labels: Sequence[str], spec: Iterable[str] | Mapping[str, Sequence[str]] | None = None
                  ) -> "Verbalizer":
        """`spec` is `["label=word1,word2", ...]` or a mapping; labels not named keep their own name as word."""
        mapping: dict[str, tuple[str, ...]] = {}
        if isinstance(spec, Mapping):
            mapping = {str(k): tuple(v) if not isinstance(v, str) else (v,) for k, v in spec.items()}
        elif spec:
            for item in spec:
                for part in str(item).split():
                    label, sep, words = part.partition("=")
                    if not sep or not words.strip(","):
                        raise ConfigError(f"--label-words '{part}': expected LABEL=word1,word2")
                    mapping[label] = tuple(w for w in words.split(",") if w)
        unknown = sorted(set(mapping) - set(labels))
        if unknown:
            raise ConfigError(f"--label-words names unknown labels {unknown}; the labels are {list(labels)}")
        return cls(tuple(labels), tuple(mapping.get(label, (label,)) for label in labels))

    def as_dict(self) -> dict[str, list[str]]:
        return {label: list(words) for label, words in zip(self.labels, self.words)}

    def flat_words(self) -> list[tuple[int, str]]:
        """(class index, word) for every word, in a fixed order."""
        return [(c, w) for c, words in enumerate(self.words) for w in words]

    def token_ids(self, encode: Callable[[str], list[int]]) -> list[list[int]]:
        """Token ids of every word (order of `flat_words`), through the template's answer encoding."""
        ids = [encode(word) for _, word in self.flat_words()]
        for (label, word), toks in zip(((self.labels[c], w) for c, w in self.flat_words()), ids):
            if not toks:
                raise ConfigError(f"label word '{word}' of label '{label}' encodes to no tokens (--label-words)")
        return ids

    def class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, W) word log-likelihoods -> (B, C) class scores (log-sum-exp over each class's words)."""
        index = torch.tensor([c for c, _ in self.flat_words()], device=word_scores.device)
        out = word_scores.new_full((word_scores.shape[0], len(self.labels)), float("-inf"))
        for c in range(len(self.labels)):
            out[:, c] = torch.logsumexp(word_scores[:, index == c], dim=1)
        return out
