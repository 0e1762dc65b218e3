import pytest
import tiny
import torch

from softprompt import ConfigError, PromptedModel, SoftPrompt, Verbalizer, build_template, save_prompt
from softprompt.inference.bank import PromptBank, UnknownPromptError
from softprompt.inference.cache_budget import cache_bytes


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


def _gen(backbone, placement, n, seed):
    torch.manual_seed(seed)
    template = build_template("Q: {text}\nA: {target}", placement, n)
    return PromptedModel(backbone, SoftPrompt(torch.randn(template.num_virtual_tokens, backbone.hidden_size) * 0.5),
                         template, None, max_length=64)


def test_mixed_classification_and_generation_equal_each_alone(tiny_any):
    from softprompt import generate
    from softprompt.inference.batch import Classification, Generation, Request

    bank = PromptBank(tiny_any)
    bank.add("sentiment", _prompt(tiny_any, "Review: {text} Sentiment: {label}", "prefix", 5,
                                  ["negative", "positive"], seed=1))
    bank.add("multi", _prompt(tiny_any, "Review: {text} Sentiment: {label}", "prefix", 3,
                              ["negative", "positive"], ["positive=great", "negative=bad"], seed=2))
    bank.add("qa", _gen(tiny_any, "prefix", 6, seed=4))
    bank.add("qa-suffix", _gen(tiny_any, "suffix", 2, seed=5))
    bank.add("qa-mid", _prompt(tiny_any, "[soft:2] Article: {text} [soft:3] Topic: {label}", "template", None,
                               ["sport", "tech"], seed=6))  # a classification prompt asked to generate
    streamed: list[str] = []
    requests = [
        Request(bank.get("qa"), "the quick brown fox", "generate", max_new_tokens=9),
        Request(bank.get("sentiment"), "a great film", "classify"),
        Request(bank.get("qa-suffix"), "great", "generate", max_new_tokens=4),
        Request(bank.get("multi"), "boring and bad", "classify"),
        Request(bank.get("qa"), "a dull and tedious movie with words", "generate", max_new_tokens=6,
                on_text=streamed.append),
        Request(bank.get("qa-mid"), "tech news", "generate", max_new_tokens=5),
        Request(bank.get("qa"), "great", "generate", max_new_tokens=7, temperature=1.3, top_p=0.9, seed=11),
    ]
    mixed = bank.run(requests)
    for req, result in zip(requests, mixed):
        model = req.model
        row = {model.template.input_fields[0]: req.inputs}
        if req.task == "classify":
            assert isinstance(result, Classification)
            alone = model.class_scores(model.make_batch([row], label_field=None))[0]
            torch.testing.assert_close(torch.tensor(list(result.scores.values())), alone.detach().float(),
                                       atol=1e-4, rtol=1e-4)
        else:
            assert isinstance(result, Generation)
            reference = generate(model, [row], max_new_tokens=req.max_new_tokens, use_cache=False,
                                 do_sample=req.temperature > 0, temperature=req.temperature or 1.0,
                                 top_p=req.top_p, seed=req.seed)[0]
            assert result.text == reference
            assert result.completion_tokens <= req.max_new_tokens and result.prompt_tokens > 0
    assert "".join(streamed) == mixed[4].text and len(streamed) > 1
    # a seeded sampled row draws the same text whatever shares its batch
    assert bank.run([requests[6]])[0].text == mixed[6].text
    with pytest.raises(ConfigError, match="generation prompt"):
        bank.run([Request(bank.get("qa"), "x", "classify")])
    with pytest.raises(ConfigError, match="missing field"):
        bank.run([Request(bank.get("qa"), {"other": "x"}, "generate")])


def test_stream_holds_back_stop_strings(tiny_llama):
    from softprompt.inference.batch import Request

    bank = PromptBank(tiny_llama)
    bank.add("qa", _gen(tiny_llama, "prefix", 4, seed=0))
    full = bank.generate([("qa", "the quick brown fox")], max_new_tokens=12)[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip()
    pieces: list[str] = []
    result = bank.run([Request(bank.get("qa"), "the quick brown fox", "generate", max_new_tokens=12, stop=[stop],
                               on_text=pieces.append)])[0]
    assert result.finish_reason == "stop" and stop not in result.text and full.startswith(result.text)
    assert "".join(pieces) == result.text


def test_length_groups_sort_split_on_padding_and_cap_rows():
    from softprompt.inference.engine import length_groups

    lengths = [100, 10, 12, 95, 11, 50]
    groups = length_groups(lengths, pad_ratio=1.5)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert groups == [[1, 4, 2], [5, 3, 0]]  # the short rows together, the long ones together
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) * longest <= 1.5 * sum(lengths[i] for i in group)
    assert [len(g) for g in length_groups([5] * 10, max_rows=4)] == [4, 4, 2]


def test_cache_budget_evicts_least_recent_and_results_do_not_change(tiny_llama):
    """Under a budget that holds one prompt's cache, rows alternating between three prefix prompts still get
    the scores of an unlimited bank; the budget drops the least recently used caches and stays within bounds."""
    specs = [("a", 5, 1), ("b", 3, 2), ("c", 6, 3)]
    free = PromptBank(tiny_llama)
    for name, n, seed in specs:
        free.add(name, _prompt(tiny_llama, "Review: {text} Sentiment: {label}", "prefix", n, ["no", "yes"], seed=seed))
    rows = [(name, text) for text in ("a great film", "dull", "warm and funny") for name, _, _ in specs]
    expected = free.classify(rows)
    one = max(cache_bytes(free.get(n).prompt_cache()) for n, _, _ in specs)
    assert free.cache_budget.bytes >= 3 * one // 2 and free.cache_budget.evictions == 0  # all three held

    tight = PromptBank(tiny_llama, cache_budget_bytes=one)
    for name, n, seed in specs:
        tight.add(name, _prompt(tiny_llama, "Review: {text} Sentiment: {label}", "prefix", n, ["no", "yes"],
                                seed=seed))
    for row, want in zip(rows, expected):  # one row at a time: every prompt switch passes the budget
        got = tight.classify([row])[0]
        assert got.label == want.label
        torch.testing.assert_close(torch.tensor(list(got.scores.values())), torch.tensor(list(want.scores.values())))
        assert tight.cache_budget.bytes <= one and len(tight.cache_budget) == 1
    assert tight.cache_budget.evictions >= len(rows) - 1
    last = rows[-1][0]
    assert tight.get(last)._prompt_cache is not None
    assert all(tight.get(n)._prompt_cache is None for n, _, _ in specs if n != last)  # dropped, prompt kept
    tight.remove(last)
    assert tight.cache_budget.bytes == 0 and len(tight.cache_budget) == 0


def test_prompt_cache_is_one_block_with_the_computed_values(tiny_llama):
    """A prompt's cached keys/values are views of one allocation (a thousand prompts' caches as separate small
    tensors fragmented a server's heap), holding exactly what the prefix pass computed."""
    from softprompt.kinds.causal_lm.model import _packed

    model = _prompt(tiny_llama, "Review: {text} Sentiment: {label}", "prefix", 5, ["no", "yes"], seed=4)
    model.eval()
    layers = model.prompt_cache()
    storages = {t.untyped_storage().data_ptr() for layer in layers for t in layer}
    assert len(layers) == len(tiny_llama.decoder_layers()) and len(storages) == 1
    model.use_prompt_cache = False
    rows = model.make_batch([{"text": "a warm film"}], label_field=None)
    with torch.no_grad():
        uncached = model.class_scores(rows)
    model.use_prompt_cache = True
    with torch.no_grad():
        torch.testing.assert_close(model.class_scores(rows), uncached, rtol=1e-4, atol=1e-4)
    computed = [(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)), (torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))]
    packed = _packed(computed)
    for (k, v), (pk, pv) in zip(computed, packed):
        assert torch.equal(k, pk) and torch.equal(v, pv)
    assert packed[0][0].untyped_storage().data_ptr() == packed[1][1].untyped_storage().data_ptr()
