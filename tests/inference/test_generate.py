import pytest
import tiny
import torch

from softprompt import generate


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_cached_greedy_matches_no_cache_loop(tiny_any, placement):
    model = tiny.qa_model(tiny_any, placement)
    rows = [{"text": "the quick brown fox"}, {"text": "great"}, {"text": "a dull and tedious movie with words"}]
    cached = generate(model, rows, max_new_tokens=12)
    plain = generate(model, rows, max_new_tokens=12, use_cache=False)
    assert cached == plain
    assert all(len(model.backbone.tokenizer(t, add_special_tokens=False).input_ids) >= 6 for t in cached)
    # batched generation equals one row at a time
    assert [generate(model, [r], max_new_tokens=12)[0] for r in rows] == cached


def test_prompt_changes_generation(tiny_llama):
    model = tiny.qa_model(tiny_llama)
    batch = model.make_batch([{"text": "the quick brown fox"}], label_field=None)
    before = model.backbone.token_logits(model.hidden(batch)[0][:, -1])
    with torch.no_grad():
        model.prompt.embeddings.mul_(-3.0)
    after = model.backbone.token_logits(model.hidden(batch)[0][:, -1])
    assert (before - after).abs().max() > 1e-3


def test_stop_strings_and_sampling(tiny_llama):
    model = tiny.qa_model(tiny_llama)
    rows = [{"text": "great"}]
    full = generate(model, rows, max_new_tokens=12)[0]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    if stop.strip():
        cut = generate(model, rows, max_new_tokens=12, stop=[stop])[0]
        assert stop not in cut and full.startswith(cut)
    a = generate(model, rows * 2, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    b = generate(model, rows * 2, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    assert a == b
    many = {generate(model, rows, max_new_tokens=8, do_sample=True, temperature=2.0, seed=s)[0] for s in range(6)}
    assert len(many) > 1
