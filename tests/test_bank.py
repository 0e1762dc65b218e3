import pytest
import torch

from softprompt import ConfigError, PromptedModel, SoftPrompt, Verbalizer, build_template, save_prompt
from softprompt.inference.bank import PromptBank, UnknownPromptError

import tiny


def _prompt(backbone, body, placement, n, labels, words=(), seed=0):
    torch.manual_seed(seed)
    template = build_template(body, placement, n)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, backbone.hidden_size) * 0.3)
    return PromptedModel(backbone, prompt, template, Verbalizer.from_spec(labels, words), max_length=64)


def test_mixed_batch_equals_each_prompt_alone(tiny_any):
    bank = PromptBank(tiny_any)
    bank.add("sentiment", _prompt(tiny_any, "Review: {text} Sentiment: {label}", "prefix", 5,
                                  ["negative", "positive"], ["positive=great", "negative=bad"], seed=1))
    bank.add("multi", _prompt(tiny_any, "Review: {text} Sentiment: {label}", "suffix", 3,
                              ["negative", "positive"], seed=2))  # multi-token label words
    bank.add("topic", _prompt(tiny_any, "[soft:2] Article: {text} [soft:4] Topic: {label}", "template", None,
                              ["sport", "tech", "business"], seed=3))
    requests = [("sentiment", "a great film"), ("topic", "the quick brown fox jumps over the lazy dog"),
                ("multi", {"text": "boring"}), ("sentiment", "an awful waste of time and money"),
                ("topic", "tech"), ("multi", "warm, funny and moving")]
    mixed = bank.classify(requests)
    for (name, row), result in zip(requests, mixed):
        model = bank.get(name)
        row = {"text": row} if isinstance(row, str) else row
        alone = model.class_scores(model.make_batch([row], label_field=None))[0]
        torch.testing.assert_close(torch.tensor(list(result.scores.values())), alone.detach().float(),
                                   atol=1e-4, rtol=1e-4)
        assert result.label == model.verbalizer.labels[int(alone.argmax())]


def test_bank_files_swap_and_errors(tmp_path, tiny_llama):
    bank = PromptBank(tiny_llama)
    path = save_prompt(tmp_path / "p.safetensors", _prompt(tiny_llama, "{text} Label: {label}", "prefix", 4,
                                                           ["a", "b"]))
    bank.add("p", path)
    first = bank.get("p")
    bank.add("p", path)  # replace: holders of the old model keep a working object
    assert bank.get("p") is not first and bank.names() == ["p"]
    with pytest.raises(UnknownPromptError, match="no prompt named 'x'"):
        bank.classify([("x", "text")])
    other = tiny.tiny_backbone("llama", seed=7)
    from softprompt import IncompatiblePromptError
    with pytest.raises(IncompatiblePromptError):
        PromptBank(other).add("p", path)
    bank.remove("p")
    assert len(bank) == 0
    gen = PromptedModel(tiny_llama, SoftPrompt(torch.zeros(2, 32)), build_template("{text} {target}", "prefix", 2))
    bank.add("gen", gen)
    with pytest.raises(ConfigError, match="generation prompt"):
        bank.classify([("gen", "x")])


def test_ensemble_average_and_vote(tiny_llama):
    bank = PromptBank(tiny_llama)
    for seed in range(3):
        bank.add(f"p{seed}", _prompt(tiny_llama, "Review: {text} Sentiment: {label}", "prefix", 4,
                                     ["negative", "positive"], ["positive=great", "negative=bad"], seed=seed))
    rows = ["a great film", "boring", "the lazy dog"]
    averaged = bank.ensemble(["p0", "p1", "p2"], rows)
    voted = bank.ensemble(["p0", "p1", "p2"], rows, mode="vote")
    singles = {n: bank.classify([(n, r) for r in rows]) for n in ("p0", "p1", "p2")}
    for i in range(len(rows)):
        probs = torch.stack([torch.tensor(list(singles[n][i].scores.values())).softmax(-1) for n in singles])
        torch.testing.assert_close(torch.tensor(list(averaged[i].scores.values())).exp(), probs.mean(0),
                                   atol=1e-5, rtol=1e-4)
        labels = [singles[n][i].label for n in singles]
        assert voted[i].label == max(set(labels), key=labels.count)
    bank.add("topic", _prompt(tiny_llama, "{text} Topic: {label}", "prefix", 2, ["sport", "tech"]))
    with pytest.raises(ConfigError, match="label set"):
        bank.ensemble(["p0", "topic"], rows)
