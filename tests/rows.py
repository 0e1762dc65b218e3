"""The tests' small data sets as files: the eight-review sentiment set, and a JSON Lines writer."""

import json
from pathlib import Path

SENTIMENT = [
    ("a great film with a fine cast", "positive"), ("a dull and tedious movie", "negative"),
    ("warm, funny and moving", "positive"), ("an awful waste of time", "negative"),
    ("the acting is good", "positive"), ("boring and bad", "negative"),
    ("great fun", "positive"), ("terrible plot", "negative"),
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_sentiment_dir(folder: Path, train_repeats: int = 4) -> Path:
    """train/validation/test .jsonl files of the small sentiment set."""
    folder.mkdir()
    rows = [{"text": t, "label": l} for t, l in SENTIMENT]
    write_jsonl(folder / "train.jsonl", rows * train_repeats)
    write_jsonl(folder / "validation.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows)
    return folder
