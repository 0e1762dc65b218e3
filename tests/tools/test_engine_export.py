"""`softprompt export --format vllm | trtllm` on tiny backbones: what the files hold (read back), what is refused.

The vLLM export is also classified through a real vLLM server in tests/serve/test_vllm.py; the TensorRT-LLM prompt table
is checked here by reading it back (no GPU engine runs in the tests).
"""

import json

import numpy as np
import pytest
import tiny
import torch

from softprompt import ConfigError, PromptedModel, Template, Verbalizer, save_prompt
from softprompt.cli import main
from softprompt.methods.deep import DeepPrompt
from softprompt.methods.dept import DecomposedPrompt
from softprompt.tools.engine_export import export_trtllm, export_vllm, read_trtllm_table


def _prompt(tmp_path, backbone, name, n, seed=0):
    return save_prompt(tmp_path / f"{name}.safetensors", tiny.classifier(backbone, "prefix", n, seed))


def test_trtllm_prompt_table_holds_every_prompt_under_its_task_id(tmp_path, tiny_llama):
    short, long = _prompt(tmp_path, tiny_llama, "short", 3, seed=1), _prompt(tmp_path, tiny_llama, "long", 5, seed=2)
    out = tmp_path / "table"
    assert main(["export", str(long), str(short), str(out), "--format", "trtllm"]) == 0
    table, manifest = read_trtllm_table(out)
    assert table.shape == (2, 5, tiny_llama.hidden_size) and table.dtype == np.float32
    assert [t["name"] for t in manifest["tasks"]] == ["long", "short"]
    assert [t["task_id"] for t in manifest["tasks"]] == [0, 1]
    assert manifest["vocab_size"] == tiny_llama.vocab_size and manifest["backbone"] == "tiny-llama"
    for task_id, (seed, n) in enumerate([(2, 5), (1, 3)]):
        expected = tiny.classifier(tiny_llama, "prefix", n, seed).prompt().detach().numpy()
        assert np.array_equal(table[task_id, :n], expected)
        assert not table[task_id, n:].any()  # a shorter prompt's rows are zero padding
    assert "--prompt_tasks" in (out / "README.md").read_text()


def test_vllm_export_holds_the_prompt_its_vectors_and_a_manifest(tmp_path, tiny_llama):
    prompt = _prompt(tmp_path, tiny_llama, "rt", 4)
    out = export_vllm(prompt, tmp_path / "rt-vllm", backbone_folder="/models/tiny")
    manifest = json.loads((out / "vllm.json").read_text())
    assert manifest["serve"] == "vllm serve /models/tiny --enable-prompt-embeds"
    assert manifest["num_virtual_tokens"] == 4 and manifest["soft_runs"] == [4]
    assert manifest["labels"] == ["negative", "positive"] and manifest["hidden_size"] == tiny_llama.hidden_size
    vectors = torch.load(out / "soft_tokens.pt", weights_only=True)
    assert torch.equal(vectors, tiny.classifier(tiny_llama, "prefix", 4, 0).prompt().detach())
    assert (out / "prompt.safetensors").read_bytes() == prompt.read_bytes()
    with pytest.raises(ConfigError, match="already holds a previous vLLM export; pass --overwrite"):
        export_vllm(prompt, out)
    assert export_vllm(prompt, out, overwrite=True) == out
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        export_vllm(prompt, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_what_an_engine_cannot_take_is_refused_in_one_line(tmp_path, tiny_llama, tiny_gpt2, capsys):
    layers, heads, dim = tiny_llama.kv_layout()
    deep = save_prompt(tmp_path / "deep.safetensors", PromptedModel(
        tiny_llama, DeepPrompt(torch.randn(layers, 3, heads, dim), torch.randn(layers, 3, heads, dim),
                               tiny_llama.hidden_size),
        Template.parse("Review: {text} Sentiment: {label}"), Verbalizer.from_spec(["negative", "positive"])))
    torch.manual_seed(0)
    dept = save_prompt(tmp_path / "dept.safetensors", PromptedModel(
        tiny_llama, DecomposedPrompt(torch.randn(3, tiny_llama.hidden_size), torch.randn(64, 2),
                                     torch.randn(2, tiny_llama.hidden_size)),
        tiny.classifier(tiny_llama, "prefix", 3, 0).template, Verbalizer.from_spec(["negative", "positive"]),
        max_length=64))
    plain = _prompt(tmp_path, tiny_llama, "plain", 3)
    other = save_prompt(tmp_path / "other.safetensors", tiny.classifier(tiny_gpt2, "prefix", 3, 0))
    cases = [([str(deep), str(tmp_path / "a"), "--format", "vllm"], "deep prompt"),
             ([str(dept), str(tmp_path / "b"), "--format", "trtllm"], "dept prompt"),
             ([str(plain), str(other), str(tmp_path / "c"), "--format", "trtllm"], "one backbone"),
             ([str(plain), str(plain), str(tmp_path / "d"), "--format", "vllm"], "one prompt file"),
             ([str(plain), str(tmp_path / "e"), "--format", "onnx"], "choose one of peft, vllm, trtllm")]
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing half-written
    with pytest.raises(ConfigError, match="--engine torch"):
        export_trtllm([deep], tmp_path / "f")
