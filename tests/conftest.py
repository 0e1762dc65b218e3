import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402
from rows import make_sentiment_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny.tiny_backbone("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny.tiny_backbone("gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_any(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama" else tiny_gpt2


@pytest.fixture
def sentiment_dir(tmp_path) -> Path:
    return make_sentiment_dir(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")
