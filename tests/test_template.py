import pytest
import torch

from softprompt import ConfigError, Placement, PromptedModel, SoftPrompt, Template, Verbalizer, build_template
from softprompt.template import TemplateEncoder

BODY = "Review: {text} Sentiment: {label}"
ROWS = [{"text": "a great film with a fine cast and more words to pad"}, {"text": "bad"},
        {"text": "warm, funny and moving"}]


def test_parse_segments_and_answer_space():
    t = Template.parse("[soft:8] Review: {text} [soft:4] Sentiment: {label}")
    assert [s.kind for s in t.segments] == ["soft", "text", "field", "text", "soft", "text"]
    assert t.num_virtual_tokens == 12 and t.input_fields == ("text",)
    assert [s.offset for s in t.segments if s.kind == "soft"] == [0, 8]
    assert t.answer_space == " " and t.segments[-1].value == " Sentiment:"


@pytest.mark.parametrize("bad, needle", [
    ("Review: {text}", "answer marker"), ("{label} {text}", "must come last"),
    ("Sentiment: {label}", "no input field"), ("[soft:0] {text} {label}", "N >= 1"),
    ("{text} {label} trailing", "not allowed"),
])
def test_parse_errors_name_the_flag(bad, needle):
    with pytest.raises(ConfigError, match="--template") as info:
        Template.parse(bad)
    assert needle in str(info.value)


def test_placements():
    assert build_template(BODY, "prefix", 5).source.startswith("[soft:5]Review:")
    suffix = build_template(BODY, "suffix", 5)
    assert suffix.source == "Review: {text}[soft:5] Sentiment: {label}"
    t = build_template("[soft:2] {text} [soft:3] Label: {label}", "template", None)
    assert t.num_virtual_tokens == 5
    with pytest.raises(ConfigError, match="--placement template"):
        build_template("[soft:2] {text} {label}", Placement.PREFIX, None)
    with pytest.raises(ConfigError, match="disagrees"):
        build_template("[soft:2] {text} {label}", "template", 7)


def test_encoder_truncates_input_never_prompt(tiny_llama):
    t = build_template(BODY, "prefix", 6)
    enc = TemplateEncoder(t, tiny_llama.tokenizer, max_length=20)
    long = enc.encode({"text": "the quick brown fox jumps over the lazy dog " * 10})
    assert len(long.input_ids) <= 20
    assert long.soft_index.count(-1) == len(long.input_ids) - 6 and long.soft_index[:6] == list(range(6))
    tail = tiny_llama.tokenizer.decode(long.input_ids[-3:])
    assert tail.endswith("Sentiment:")  # the template's end (answer position) survives truncation


@pytest.mark.parametrize("words", [(), ("positive=great", "negative=bad")], ids=["multi-token", "single-token"])
@pytest.mark.parametrize("body, placement, count", [
    (BODY, "prefix", 5), (BODY, "suffix", 4), ("[soft:3] Review: {text} [soft:2] Sentiment: {label}", "template", None),
])
def test_batched_forward_equals_per_row(tiny_any, body, placement, count, words):
    """Left padding keeps every row's soft tokens and text in place: batched == one row at a time."""
    torch.manual_seed(0)
    template = build_template(body, placement, count)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, tiny_any.hidden_size) * 0.05)
    verbalizer = Verbalizer.from_spec(["negative", "positive"], words)
    model = PromptedModel(tiny_any, prompt, template, verbalizer, max_length=64)
    batch = model.make_batch(ROWS, label_field=None)
    # Padding only on the left: after the first real token, the mask never drops back to 0.
    mask = batch["attention_mask"]
    assert torch.all(mask[:, 1:] >= mask[:, :-1])
    assert torch.all(batch["soft_index"][mask == 0] == -1)
    batched = model.class_scores(batch)
    single = torch.cat([model.class_scores(model.make_batch([r], label_field=None)) for r in ROWS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    if model.max_word_tokens > 1:
        return  # rows are (example, word) pairs; the scores above cover them
    model.split_frozen_input = False  # compare whole sequences
    hidden, _ = model.hidden(batch)
    for row, ex in enumerate(ROWS):
        one, _ = model.hidden(model.make_batch([ex], label_field=None))
        n = one.shape[1]
        torch.testing.assert_close(hidden[row, -n:], one[0], atol=1e-5, rtol=1e-4)


def test_soft_positions_carry_prompt_vectors(tiny_llama):
    template = build_template("[soft:2] {text} [soft:3] Label: {label}", "template", None)
    prompt = SoftPrompt(torch.arange(5 * tiny_llama.hidden_size, dtype=torch.float32).view(5, -1))
    model = PromptedModel(tiny_llama, prompt, template, Verbalizer.from_spec(["a", "b"]), max_length=64)
    batch = model.make_batch(ROWS[:2], label_field=None)
    embeds = model.embed(batch)
    for row in range(2):
        for pos in range(batch["input_ids"].shape[1]):
            k = int(batch["soft_index"][row, pos])
            expected = prompt.embeddings[k] if k >= 0 else tiny_llama.embed(batch["input_ids"][row, pos])
            assert torch.equal(embeds[row, pos], expected)


@pytest.mark.parametrize("task", ["classification", "generation"])
@pytest.mark.parametrize("body, placement", [
    ("Review: {text} Sentiment: {label}", "suffix"),
    ("Review: {text} [soft:2] Sentiment: [soft:2] {label}", "template"),
])
def test_frozen_input_split_matches_single_pass(tiny_any, body, placement, task):
    """Soft tokens after the input: the split forward (input columns without gradients, into a cache) gives
    the same loss and the same prompt gradient as one full pass."""
    torch.manual_seed(0)
    if task == "generation":
        body = body.replace("{label}", "{target}")
    template = build_template(body, placement, 4 if placement == "suffix" else None)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, tiny_any.hidden_size) * 0.3)
    verbalizer = Verbalizer.from_spec(["negative", "positive"]) if task == "classification" else None
    model = PromptedModel(tiny_any, prompt, template, verbalizer, max_length=64)
    rows = [{"text": "the quick brown fox jumps over the lazy dog", "label": "positive", "target": "great fun"},
            {"text": "a dull and tedious movie with a thin plot", "label": "negative", "target": "boring"}]
    batch = model.make_batch(rows)
    assert model._frozen_columns(batch["soft_index"]) >= 8
    results = []
    for split in (True, False):
        model.split_frozen_input = split
        prompt.embeddings.grad = None
        loss, _ = model.loss(batch)
        loss.backward()
        results.append((loss.detach(), prompt.embeddings.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
    assert results[0][1].abs().sum() > 0


@pytest.mark.parametrize("body, placement, count", [
    (BODY, "prefix", 5), ("[soft:3] Review: {text} [soft:2] Sentiment: {label}", "template", None)])
def test_prompt_cache_matches_uncached_and_follows_prompt_changes(tiny_any, body, placement, count):
    torch.manual_seed(0)
    template = build_template(body, placement, count)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, tiny_any.hidden_size) * 0.3)
    model = PromptedModel(tiny_any, prompt, template, Verbalizer.from_spec(["negative", "positive"]), max_length=64)
    assert model.prompt_prefix_length == (5 if placement == "prefix" else 3)
    batch = model.make_batch(ROWS, label_field=None)
    with torch.no_grad():
        model.use_prompt_cache = False
        plain = model.class_scores(batch)
        model.use_prompt_cache = True
        cached = model.class_scores(batch)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-4)
        first = model.prompt_cache()
        assert model.prompt_cache() is first  # reused while the prompt is unchanged
        prompt.embeddings.mul_(2.0)           # an in-place update (as an optimiser step) invalidates it
        assert model.prompt_cache() is not first
        model.use_prompt_cache = False
        plain = model.class_scores(batch)
        model.use_prompt_cache = True
        torch.testing.assert_close(model.class_scores(batch), plain, atol=1e-5, rtol=1e-4)
