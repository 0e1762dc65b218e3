import errno
import json
import os

import pytest
import tiny
import torch
from safetensors.torch import save_file

import softprompt.formats as formats
from softprompt import (
    IncompatiblePromptError,
    PromptedModel,
    PromptFileError,
    SoftPrompt,
    Verbalizer,
    build_template,
    load_prompted_model,
    read_prompt_file,
    read_prompt_tensors,
    save_prompt,
)
from softprompt.errors import StorageError
from softprompt.frozen import weights_fingerprint
from softprompt.kinds.causal_lm.backbone import CausalLMBackbone


def _model(backbone, n=5):
    template = build_template("Review: {text} Sentiment: {label}", "prefix", n)
    prompt = SoftPrompt(torch.randn(n, backbone.hidden_size))
    return PromptedModel(backbone, prompt, template, Verbalizer.from_spec(["negative", "positive"], ["positive=great"]))


def test_round_trip(tmp_path, tiny_llama):
    model = _model(tiny_llama)
    path = save_prompt(tmp_path / "p.safetensors", model, init="labels", training={"best_step": 3})
    embeddings, meta = read_prompt_file(path)
    assert torch.equal(embeddings, model.prompt.embeddings.detach())
    assert meta["backbone"]["fingerprint"] == tiny_llama.fingerprint() and meta["training"]["best_step"] == 3
    loaded = load_prompted_model(path, tiny_llama)
    assert loaded.template == model.template and loaded.verbalizer == model.verbalizer
    rows = [{"text": "a great film"}, {"text": "boring"}]
    torch.testing.assert_close(loaded.class_scores(loaded.make_batch(rows, None)),
                               model.class_scores(model.make_batch(rows, None)))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_wrong_backbone_is_refused(tmp_path, tiny_llama):
    path = save_prompt(tmp_path / "p.safetensors", _model(tiny_llama))
    other = tiny.tiny_backbone("llama", seed=1)  # same shapes, other weights
    with pytest.raises(IncompatiblePromptError, match="fingerprint"):
        load_prompted_model(path, other)
    with pytest.raises(IncompatiblePromptError, match="hidden size"):
        _, meta = read_prompt_file(path)
        meta["backbone"]["hidden_size"] = 64
        formats.check_compatible(meta, tiny_llama)


def test_fingerprint_is_dtype_independent_and_detects_changes(tiny_llama):
    model = tiny.tiny_model("llama")
    fp32 = weights_fingerprint(model)
    assert weights_fingerprint(tiny.tiny_model("llama").to(torch.bfloat16)) == fp32
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert weights_fingerprint(model) != fp32
    assert weights_fingerprint(model, full=True) != weights_fingerprint(tiny.tiny_model("llama"), full=True)


def test_size_of_a_20x576_prompt_is_well_under_100kb(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=400, hidden_size=576, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    backbone = CausalLMBackbone(AutoModelForCausalLM.from_config(config), tiny.tiny_tokenizer(), name="wide")
    path = save_prompt(tmp_path / "p.safetensors", _model(backbone, n=20), init="labels")
    assert path.stat().st_size < 60_000  # 20 x 576 fp32 = 46,080 bytes + metadata


def test_failed_write_leaves_nothing_behind(tmp_path, tiny_llama, monkeypatch):
    """A full disk mid-save is a `StorageError` (CLI exit 1); the file there before is untouched, no temp left."""
    path = tmp_path / "p.safetensors"
    model = _model(tiny_llama)
    save_prompt(path, model)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(formats, "save_file", broken)
    with pytest.raises(StorageError, match="No space left on device.*unchanged"):
        save_prompt(path, model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["p.safetensors"]


def test_not_a_prompt_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(PromptFileError, match="not a softprompt file"):
        read_prompt_file(bad)
    (tmp_path / "y.safetensors").write_bytes(b"garbage")
    with pytest.raises(PromptFileError, match="not a readable safetensors"):
        read_prompt_file(tmp_path / "y.safetensors")
    with pytest.raises(PromptFileError, match="not found"):
        read_prompt_file(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("change", [
    {"max_length": "abc"}, {"template": 5}, {"labels": [1, 2]}, {"task": "dance"}, {"num_virtual_tokens": "2"},
    {"backbone": None}, {"backbone": {"name": "x", "hidden_size": "32", "fingerprint": "f"}},
    {"backbone": {"name": "x", "kind": "toaster"}}, {"max_length": True},
], ids=lambda change: json.dumps(change))
def test_crafted_metadata_is_a_prompt_file_error(tmp_path, tiny_llama, change):
    from safetensors.torch import save_file

    model = PromptedModel(tiny_llama, SoftPrompt(torch.randn(2, 32)), build_template("{text} {label}", "prefix", 2),
                          Verbalizer.from_spec(["a", "b"]))
    path = save_prompt(tmp_path / "good.safetensors", model)
    tensors, meta = read_prompt_tensors(path)
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata={"format": "softprompt", "softprompt": json.dumps({**meta, **change})})
    with pytest.raises(PromptFileError, match="damaged metadata"):
        read_prompt_tensors(tmp_path / "bad.safetensors")


def test_nan_tensors_are_refused(tmp_path, tiny_llama):
    model = PromptedModel(tiny_llama, SoftPrompt(torch.full((2, 32), float("nan"))),
                          build_template("{text} {label}", "prefix", 2), Verbalizer.from_spec(["a", "b"]))
    path = save_prompt(tmp_path / "nan.safetensors", model)
    with pytest.raises(PromptFileError, match="NaN or infinite"):
        read_prompt_tensors(path)

