"""Property-based fuzzing of every reader of untrusted input: whatever it is given, it accepts and returns
well-formed values, or refuses with the project's typed error -- never another exception.

Inputs are arbitrary text and bytes, and mutations of valid inputs (a valid template, data file, YAML config
and prompt file with bytes flipped, cut or inserted).
"""

import json
import string

import pytest
import tiny
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt import (
    ConfigError,
    DataError,
    PromptedModel,
    PromptFileError,
    SoftPrompt,
    Template,
    TrainConfig,
    Verbalizer,
    build_template,
    read_prompt_tensors,
    save_prompt,
)
from softprompt.data.readers import read_rows
from softprompt.errors import SoftPromptError

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
TEMPLATE_ALPHABET = string.ascii_letters + string.digits + " {}[]:\n\\é\u2028\ud800"


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid input with a byte flipped, a slice cut out, or random bytes inserted."""
    n = len(valid)
    flip = st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(
        lambda t: valid[:t[0]] + bytes([t[1]]) + valid[t[0] + 1:])
    cut = st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda t: valid[:min(t)] + valid[max(t):])
    insert = st.tuples(st.integers(0, n), st.binary(max_size=32)).map(lambda t: valid[:t[0]] + t[1] + valid[t[0]:])
    return st.one_of(flip, cut, insert)


@FUZZ
@given(st.one_of(st.text(TEMPLATE_ALPHABET, max_size=60),
                 _mutations(b"[soft:4] Review: {text} [soft:2] Sentiment: {label}").map(
                     lambda b: b.decode("utf-8", "replace"))))
def test_template_parser(source):
    try:
        template = Template.parse(source)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert template.num_virtual_tokens >= 0 and isinstance(template.input_fields, tuple)
    for placement in ("prefix", "suffix", "template"):
        try:
            build_template(source.replace("[soft:", "[x:"), placement, 3)
        except ConfigError:
            pass


@FUZZ
@given(st.lists(st.text(max_size=8), max_size=4), st.lists(st.text(max_size=20), max_size=4))
def test_label_word_specs(labels, spec):
    try:
        verbalizer = Verbalizer.from_spec(labels, spec)
    except ConfigError as exc:
        assert str(exc).strip() and "\n" not in str(exc)  # one line, as the CLI prints it
        return
    assert list(verbalizer.labels) == [str(label) for label in labels]


def _parquet_bytes() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a fine film", "dull"], "label": ["positive", "negative"]}), buffer)
    return buffer.getvalue()


_VALID_ROWS = {
    ".parquet": _parquet_bytes(),
    ".jsonl": b'{"text": "a fine film", "label": "positive"}\n{"text": "dull", "label": "negative"}\n',
    ".csv": b'text,label\n"a fine, film",positive\ndull,negative\n',
    ".tsv": b"text\tlabel\na fine film\tpositive\ndull\tnegative\n",
}


@FUZZ
@given(st.sampled_from(sorted(_VALID_ROWS)), st.data())
def test_data_readers(tmp_path, suffix, data):
    raw = data.draw(st.one_of(st.binary(max_size=200), _mutations(_VALID_ROWS[suffix])))
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(raw)
    try:
        rows, skipped = read_rows(path, text_fields=("text",), label_field="label", skip_bad_rows=data.draw(
            st.booleans()))
    except DataError as exc:
        assert str(exc).startswith(str(path))
        return
    assert rows and all(isinstance(r["text"], str) and r["text"].strip() and isinstance(r["label"], str)
                        for r in rows)
    assert all(r["text"].encode("utf-8") for r in rows)  # no lone surrogate got through


_VALID_YAML = b"data: rotten_tomatoes\nlr: 0.03\nbatch_size: 8\nvpt:\n  deep: true\nlabel_words: [positive=great]\n"


@FUZZ
@given(st.one_of(st.binary(max_size=120), _mutations(_VALID_YAML)))
def test_yaml_config_loader(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    try:
        config = TrainConfig.from_sources(path)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(config.lr, float | int) and config.lr > 0 and isinstance(config.batch_size, int)


@pytest.fixture(scope="module")
def valid_prompt_file(tmp_path_factory):
    backbone = tiny.tiny_backbone("llama")
    model = PromptedModel(backbone, SoftPrompt(torch.randn(2, 32)), build_template("{text} {label}", "prefix", 2),
                          Verbalizer.from_spec(["negative", "positive"]))
    return save_prompt(tmp_path_factory.mktemp("fuzz") / "valid.safetensors", model).read_bytes()


@FUZZ
@given(data=st.data())
def test_prompt_file_loader(tmp_path, valid_prompt_file, data):
    raw = data.draw(st.one_of(st.binary(max_size=300), _mutations(valid_prompt_file)))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(raw)
    try:
        tensors, meta = read_prompt_tensors(path)
    except PromptFileError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)  # names the file, in one line
        return
    assert isinstance(meta, dict) and isinstance(meta["backbone"], dict)
    assert all(torch.isfinite(t).all() for t in tensors.values())


@FUZZ
@given(st.dictionaries(st.sampled_from(["max_length", "template", "labels", "task", "verbalizer", "method",
                                        "num_virtual_tokens", "backbone", "head"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                               inner, max_size=3),
                                    max_leaves=6), max_size=3))
def test_crafted_metadata_loads_or_is_refused(tmp_path, valid_prompt_file, change):
    """Valid tensors, metadata fields replaced by arbitrary JSON: a file is refused, or it loads and a model is
    rebuilt from it on its backbone -- never another exception."""
    from safetensors.torch import save_file

    from softprompt.kinds.table import load_prompted_model

    source = tmp_path / "valid.safetensors"
    source.write_bytes(valid_prompt_file)
    tensors, meta = read_prompt_tensors(source)
    path = tmp_path / "crafted.safetensors"
    save_file(tensors, str(path), metadata={"format": "softprompt", "softprompt": json.dumps({**meta, **change})})
    try:
        load_prompted_model(path, tiny.tiny_backbone("llama"))
    except SoftPromptError as exc:  # what the CLI prints: one line that says what is wrong
        message = str(exc)
        assert message.strip() and "\n" not in message and "Traceback" not in message, message
