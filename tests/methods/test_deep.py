"""Deep prompt tuning (per-layer key/value prefixes) on tiny Llama and GPT-2 backbones."""

import pytest
import tiny
import torch

from softprompt import (
    ConfigError,
    DeepPrompt,
    PromptBank,
    PromptedModel,
    SoftPrompt,
    Template,
    TrainConfig,
    Verbalizer,
    build_template,
    generate,
    load_prompted_model,
    read_prompt_tensors,
    save_prompt,
    train,
)
from softprompt.frozen import weights_fingerprint
from softprompt.inference import Request
from softprompt.scoring import backbone_autocast
from softprompt.template import left_pad

BODY = "Review: {text} Sentiment: {label}"


def _deep(backbone, count=4, seed=0, reparam=0):
    torch.manual_seed(seed)
    vectors = torch.randn(count, backbone.hidden_size) * 0.5
    keys, values = backbone.keys_values(vectors)
    return vectors, DeepPrompt(keys, values, backbone.hidden_size, reparam_hidden=reparam)


def _reference_last_hidden(model, vectors, text):
    """The same thing computed by hand: the init vectors as real inputs, then the row, one plain forward."""
    backbone = model.backbone
    ids = torch.tensor(model.encoder.encode({"text": text}).input_ids)
    embeds = torch.cat([vectors, backbone.embed(ids)])[None]
    positions = torch.arange(embeds.shape[1])[None]
    with torch.no_grad(), backbone_autocast(backbone):
        hidden, _ = backbone.hidden_states(embeds, torch.ones_like(positions), positions)
    return hidden[0, -1]


def test_deep_prefixes_equal_their_tokens_as_input(tiny_any):
    vectors, deep = _deep(tiny_any)
    model = PromptedModel(tiny_any, deep, Template.parse(BODY), Verbalizer.from_spec(["negative", "positive"]))
    rows = [{"text": "a great film with a fine cast"}, {"text": "boring"}]  # left padding in the batch
    contexts = left_pad([model.encoder.encode(r) for r in rows], model.encoder.pad_id)
    with torch.no_grad():
        cached, _ = model.hidden(contexts)                     # inference: the prompt's cache
    trained, _ = model.hidden(contexts)                        # with gradients: prefixes built from parameters
    for i, row in enumerate(rows):
        reference = _reference_last_hidden(model, vectors, row["text"])
        torch.testing.assert_close(cached[i, -1], reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(trained[i, -1].detach(), reference, atol=1e-4, rtol=1e-4)
    model.word_scores(model.make_batch(rows, label_field=None)).sum().backward()
    assert deep.keys.grad is not None and deep.keys.grad.abs().sum() > 0 and deep.values.grad.abs().sum() > 0


def test_reparameterised_prompt_folds_to_the_same_prefixes(tiny_llama):
    _, deep = _deep(tiny_llama, reparam=16)
    with torch.no_grad():
        deep.mlp[2].weight.normal_(0, 0.05)  # as if trained
    model = PromptedModel(tiny_llama, deep, Template.parse(BODY), Verbalizer.from_spec(["negative", "positive"]))
    folded = PromptedModel(tiny_llama, deep.folded(), Template.parse(BODY), Verbalizer.from_spec(["negative", "positive"]))
    batch = model.make_batch([{"text": "a great film"}, {"text": "the lazy dog"}], label_field=None)
    with torch.no_grad():
        torch.testing.assert_close(model.class_scores(batch), folded.class_scores(batch))
    assert {n for n, p in deep.named_parameters()} == {"seed", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                        "mlp.2.bias"}
    assert {n for n, p in deep.folded().named_parameters()} == {"keys", "values"}


def test_train_deep_saves_and_reloads(tmp_path, sentiment_dir):
    backbone = tiny.tiny_backbone("llama")
    before = weights_fingerprint(backbone.model, full=True)
    config = TrainConfig(model="unused", data=str(sentiment_dir), output=str(tmp_path / "run"), method="deep",
                         deep_reparam=8, num_virtual_tokens=3, max_steps=10, eval_every=5, batch_size=8, lr=0.05,
                         precision="fp32", device="cpu")
    result = train(config, backbone=backbone, progress=False)
    assert weights_fingerprint(backbone.model, full=True) == before
    tensors, meta = read_prompt_tensors(result.prompt_path)
    assert meta["method"] == "deep" and meta["num_virtual_tokens"] == 3 and "[soft:" not in meta["template"]
    assert set(tensors) == {"prefix_keys", "prefix_values"} and tensors["prefix_keys"].shape == (2, 3, 2, 8)
    loaded = load_prompted_model(result.prompt_path, backbone)
    assert isinstance(loaded.prompt, DeepPrompt) and not loaded.prompt.reparam_hidden
    batch = loaded.make_batch([{"text": "great fun"}, {"text": "terrible plot"}], label_field=None)
    with torch.no_grad():
        torch.testing.assert_close(loaded.class_scores(batch), result.model.class_scores(batch))
    history = [r["loss"] for r in result.history if r["split"] == "train"]
    assert history and all(torch.isfinite(torch.tensor(history)))


def test_deep_config_errors():
    with pytest.raises(ConfigError, match="--placement does not apply"):
        TrainConfig(data="x", method="deep", placement="suffix")
    with pytest.raises(ConfigError, match="without \\[soft:N\\]"):
        TrainConfig(data="x", method="deep", template="[soft:3] {text} {label}")
    with pytest.raises(ConfigError, match="--deep-reparam applies to --method deep"):
        TrainConfig(data="x", deep_reparam=32)
    with pytest.raises(ConfigError, match="--method 'wide'"):
        TrainConfig(data="x", method="wide")


def test_deep_and_input_prompts_mix_in_one_batch(tiny_any, tmp_path):
    _, deep = _deep(tiny_any, count=5, seed=1)
    verbalizer = Verbalizer.from_spec(["negative", "positive"])
    bank = PromptBank(tiny_any)
    bank.add("deep", PromptedModel(tiny_any, deep, Template.parse(BODY), verbalizer, max_length=64))
    torch.manual_seed(2)
    bank.add("soft", PromptedModel(tiny_any, SoftPrompt(torch.randn(3, tiny_any.hidden_size) * 0.4),
                                   build_template(BODY, "prefix", 3), verbalizer, max_length=64))
    _, writer = _deep(tiny_any, count=2, seed=3)
    bank.add("writer", PromptedModel(tiny_any, writer, Template.parse("Q: {text}\nA: {target}"), None, max_length=64))
    requests = [Request(bank.get("deep"), "a great film", "classify"),
                Request(bank.get("writer"), "the quick brown fox", "generate", max_new_tokens=6),
                Request(bank.get("soft"), "boring and bad", "classify"),
                Request(bank.get("deep"), "the lazy dog jumps", "classify")]
    mixed = bank.run(requests)
    for req, result in zip(requests, mixed):
        row = {req.model.template.input_fields[0]: req.inputs}
        if req.task == "classify":
            alone = req.model.class_scores(req.model.make_batch([row], label_field=None))[0]
            torch.testing.assert_close(torch.tensor(list(result.scores.values())), alone.detach().float(),
                                       atol=1e-4, rtol=1e-4)
        else:
            assert result.text == generate(req.model, [row], max_new_tokens=6, use_cache=False)[0]
    # a deep prompt file goes through the bank (and so the server) like any other
    path = save_prompt(tmp_path / "deep.safetensors", bank.get("deep"))
    bank.add("deep-file", path)
    assert bank.classify([("deep-file", "a great film")])[0].scores == pytest.approx(mixed[0].scores, abs=1e-5)


def test_server_serves_a_deep_prompt(tiny_llama, tmp_path):
    from fastapi.testclient import TestClient

    from softprompt.serve import ServeSettings, create_app

    _, deep = _deep(tiny_llama, count=3)
    model = PromptedModel(tiny_llama, deep, Template.parse(BODY), Verbalizer.from_spec(["negative", "positive"]))
    folder = tmp_path / "prompts"
    folder.mkdir()
    save_prompt(folder / "deep.safetensors", model)
    with TestClient(create_app(PromptBank(tiny_llama), folder, ServeSettings(reload_interval=0))) as client:
        prompts = client.get("/v1/prompts").json()["data"]
        assert prompts[0]["name"] == "deep" and prompts[0]["num_virtual_tokens"] == 3
        result = client.post("/v1/classify", json={"prompt": "deep", "inputs": ["a great film"]}).json()["results"][0]
        expected = model.class_scores(model.make_batch([{"text": "a great film"}], label_field=None))[0]
        assert list(result["scores"].values()) == pytest.approx(expected.tolist(), abs=1e-4)
