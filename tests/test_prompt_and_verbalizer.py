import pytest
import torch

from softprompt import (
    ConfigError,
    PromptedModel,
    PromptInit,
    SoftPrompt,
    Verbalizer,
    build_template,
    initial_embeddings,
)
from softprompt.template import TemplateEncoder


def _matrix(backbone):
    return backbone.input_embedding_matrix().detach().float()


def test_init_labels_uses_label_word_embeddings(tiny_llama):
    words = [[397], [391, 309]]
    out = initial_embeddings("labels", 6, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer,
                             label_word_ids=words, generator=torch.Generator().manual_seed(0))
    m = _matrix(tiny_llama)
    assert out.shape == (6, 32) and out.dtype == torch.float32
    assert torch.equal(out[0], m[397]) and torch.equal(out[1], m[391]) and torch.equal(out[2], m[309])
    # the rest are real vocabulary rows
    for row in out[3:]:
        assert (m == row).all(dim=1).any()


def test_init_text_repeats_and_truncates(tiny_llama):
    ids = tiny_llama.tokenizer("great fun", add_special_tokens=False).input_ids
    out = initial_embeddings("text", 5, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer, text="great fun")
    m = _matrix(tiny_llama)
    expected = (ids * 5)[:5]
    assert all(torch.equal(out[i], m[expected[i]]) for i in range(5))
    with pytest.raises(ConfigError, match="--init-text"):
        initial_embeddings("text", 5, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer, text="  ")


def test_init_vocab_and_random(tiny_llama):
    g = torch.Generator().manual_seed(1)
    vocab = initial_embeddings(PromptInit.VOCAB, 50, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer,
                               generator=g)
    m = _matrix(tiny_llama)
    special = set(tiny_llama.tokenizer.all_special_ids)
    for row in vocab:
        hits = (m == row).all(dim=1).nonzero().flatten().tolist()
        assert hits and not set(hits) <= special
    rand = initial_embeddings("random", 200, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer,
                              generator=torch.Generator().manual_seed(0))
    assert abs(float(rand.std()) / float(m.std()) - 1) < 0.15  # variance matched to the real embeddings
    assert not any((m == row).all(dim=1).any() for row in rand)
    with pytest.raises(ConfigError, match="--init labels"):
        initial_embeddings("labels", 4, tiny_llama.input_embedding_matrix(), tiny_llama.tokenizer)


def test_verbalizer_spec_and_errors():
    v = Verbalizer.from_spec(["neg", "pos"], ["pos=great,good neg=bad"])
    assert v.words == (("bad",), ("great", "good"))
    with pytest.raises(ConfigError, match="unknown labels"):
        Verbalizer.from_spec(["neg", "pos"], ["neutral=meh"])
    with pytest.raises(ConfigError, match="LABEL=word"):
        Verbalizer.from_spec(["neg", "pos"], ["pos:great"])


@pytest.mark.parametrize("words", [(), ("positive=great,good", "negative=bad,boring")])
def test_class_scores_are_word_log_likelihoods(tiny_any, words):
    """Scores equal the log-likelihood of each word's tokens from a plain full forward of the HF model."""
    torch.manual_seed(0)
    template = build_template("Review: {text} Sentiment: {label}", "prefix", 4)
    prompt = SoftPrompt(torch.randn(4, tiny_any.hidden_size) * 0.1)
    verbalizer = Verbalizer.from_spec(["negative", "positive"], words)
    model = PromptedModel(tiny_any, prompt, template, verbalizer, max_length=64)
    row = {"text": "a great film"}
    scores = model.class_scores(model.make_batch([row], label_field=None))[0]
    enc = TemplateEncoder(template, tiny_any.tokenizer, 64).encode(row)
    ctx = torch.tensor(enc.input_ids)
    soft = torch.tensor(enc.soft_index)
    expected = []
    for label_words in verbalizer.words:
        per_word = []
        for word in label_words:
            answer = model.encoder.answer_ids(word)
            ids = torch.cat([ctx, torch.tensor(answer)])
            embeds = tiny_any.embed(ids[None])[0].clone()
            embeds[: len(ctx)][soft >= 0] = prompt.embeddings[soft[soft >= 0]]
            logits = tiny_any.model(inputs_embeds=embeds[None]).logits[0].log_softmax(-1)
            per_word.append(sum(logits[len(ctx) - 1 + j, t] for j, t in enumerate(answer)))
        expected.append(torch.logsumexp(torch.stack(per_word), 0))
    torch.testing.assert_close(scores, torch.stack(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("setup", ["prefix", "suffix", "deep"])
def test_multi_token_words_from_the_shared_context_equal_one_row_per_word(tiny_any, setup):
    """Words of several tokens are scored from the context's cache repeated per word; the reference runs a
    full row per (example, word), as the server's batches do."""
    from softprompt import DeepPrompt, PromptedModel, SoftPrompt, Verbalizer, build_template
    from softprompt.template import Encoded, Template, left_pad

    torch.manual_seed(0)
    body = "Review: {text} Sentiment: {label}"
    verbalizer = Verbalizer.from_spec(["negative", "positive"], ["negative=terrible,dull", "positive=great"])
    if setup == "deep":
        layers, heads, dim = tiny_any.kv_layout()
        prompt = DeepPrompt(torch.randn(layers, 3, heads, dim), torch.randn(layers, 3, heads, dim), tiny_any.hidden_size)
        model = PromptedModel(tiny_any, prompt, Template.parse(body), verbalizer)
    else:
        model = PromptedModel(tiny_any, SoftPrompt(torch.randn(3, tiny_any.hidden_size)),
                              build_template(body, setup, 3), verbalizer)
    assert model.max_word_tokens > 1
    rows = [{"text": "a great film with a fine cast"}, {"text": "boring"}, {"text": "an awful waste of time"}]
    contexts = [model.encoder.encode(r, reserve=model.max_word_tokens - 1) for r in rows]
    per_word = left_pad([Encoded(c.input_ids + w[:-1], c.soft_index + [-1] * (len(w) - 1))
                         for c in contexts for w in model.word_ids], model.encoder.pad_id)
    model.use_prompt_cache, model.split_frozen_input = False, False
    with torch.no_grad():
        hidden, _ = model.hidden(per_word) if setup != "deep" else model._hidden_after_prompt_cache(per_word)[:2]
        reference = model.word_scores_from_hidden(hidden)
    model.use_prompt_cache = True
    batch = model.make_batch(rows, label_field=None)
    with torch.no_grad():
        cached = model.word_scores(batch)                    # inference: the prompt's own prefix cache too
    trained = model.word_scores(batch)                       # gradients on: the plain forward
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(trained.detach(), reference, atol=2e-5, rtol=1e-4)
    trained.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt.parameters())


def test_per_word_rows_equal_the_shared_context(tiny_any):
    """The full-row layout (used under gradient checkpointing, where a recomputed layer must not write a cache)
    gives the shared-context scores."""
    from softprompt import PromptedModel, SoftPrompt, Verbalizer, build_template

    torch.manual_seed(0)
    verbalizer = Verbalizer.from_spec(["negative", "positive"], ["negative=terrible,dull", "positive=great"])
    model = PromptedModel(tiny_any, SoftPrompt(torch.randn(3, tiny_any.hidden_size)),
                          build_template("Review: {text} Sentiment: {label}", "prefix", 3), verbalizer)
    batch = model.make_batch([{"text": "a great film"}, {"text": "an awful waste of time and money"}], None)
    model.use_prompt_cache = False
    with torch.no_grad():
        shared = model.word_scores(batch)
        hidden, _ = model.hidden(model._per_word_batch(batch))
        rows = model.word_scores_from_hidden(hidden)
    torch.testing.assert_close(rows, shared, atol=2e-5, rtol=1e-4)
