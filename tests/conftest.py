import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny.tiny_backbone("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny.tiny_backbone("gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_any(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama" else tiny_gpt2


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


@pytest.fixture
def sentiment_dir(tmp_path) -> Path:
    return make_sentiment_dir(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")
