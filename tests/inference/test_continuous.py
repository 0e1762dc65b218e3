"""Continuous batching: generation rows join a running decoder between steps and leave as they finish, with the
same tokens as alone; the server answers a request that arrives while a long generation is in flight."""

import threading
import time

import served
import tiny

from softprompt import generate, save_prompt
from softprompt.inference import Request
from softprompt.inference.batch import Decoder, start_batch


def _rows(model):
    return [{"text": "the quick brown fox"}, {"text": "great"}, {"text": "a dull and tedious movie with words"}]


def test_rows_that_join_between_steps_decode_as_they_would_alone(tiny_any):
    model = tiny.qa_model(tiny_any)
    rows = _rows(model)
    alone = [generate(model, [row], max_new_tokens=n)[0] for row, n in zip(rows, (12, 5, 9))]
    requests = [Request(model, row, "generate", max_new_tokens=n) for row, n in zip(rows, (12, 5, 9))]
    texts = {}
    results, decoder = start_batch(model.backbone, requests[:1])
    assert results == [None] and decoder.active
    for step in range(12):
        if step == 3:  # a second prefill joins the row already decoding (different cache widths)
            joined, same = start_batch(model.backbone, requests[1:], decoder)
            assert joined == [None, None] and same is decoder and len(decoder.states) == 3
        for state in decoder.step():
            texts[id(state.request)] = state.text
    assert not decoder.active
    assert [texts[id(req)] for req in requests] == alone
    sampled = Request(model, rows[0], "generate", max_new_tokens=6, temperature=1.3, seed=11)
    reference = generate(model, [rows[0]], max_new_tokens=6, do_sample=True, temperature=1.3, seed=11)[0]
    decoder = Decoder(model.backbone)
    start_batch(model.backbone, [Request(model, rows[2], "generate", max_new_tokens=20)], decoder)
    decoder.step()
    start_batch(model.backbone, [sampled], decoder)  # a seeded row draws the same tokens whoever it joins
    done = {}
    while decoder.active:
        done.update({id(s.request): s.text for s in decoder.step()})
    assert done[id(sampled)] == reference


def test_a_request_is_answered_while_a_long_generation_decodes(tiny_llama, tmp_path, monkeypatch):
    # No end-of-sequence token for this test: the long generation must run its 400 tokens whatever the weights.
    monkeypatch.setattr(type(tiny_llama.tokenizer), "eos_token_id", property(lambda self: None), raising=False)
    folder = tmp_path / "prompts"
    folder.mkdir()
    save_prompt(folder / "qa.safetensors", tiny.qa_model(tiny_llama))
    save_prompt(folder / "sentiment.safetensors", tiny.classifier(tiny_llama, "prefix", 5, 1))
    streaming, finished = threading.Event(), {}
    with served.client(tiny_llama, folder, max_new_tokens=400) as client:
        def long_generation():
            body = {"model": "qa", "prompt": "the quick brown fox", "max_tokens": 400, "stream": True}
            with client.stream("POST", "/v1/completions", json=body) as stream:
                pieces = 0
                for line in stream.iter_lines():
                    if line.startswith("data: {"):
                        pieces += 1
                        streaming.set()
            finished["long"] = (time.monotonic(), pieces)

        thread = threading.Thread(target=long_generation)
        thread.start()
        assert streaming.wait(30)
        response = client.post("/v1/classify", json={"prompt": "sentiment", "inputs": ["fine"]})
        assert response.status_code == 200, response.text
        finished["classify"] = time.monotonic()
        short = client.post("/v1/completions", json={"model": "qa", "prompt": "great", "max_tokens": 3})
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] <= 3
        finished["short"] = time.monotonic()
        thread.join()
    end, pieces = finished["long"]
    assert pieces > 100                                        # it really was long
    assert finished["classify"] < end and finished["short"] < end   # neither waited for it to finish


def test_decode_steps_leave_the_event_loop_a_thread(tiny_llama):
    import torch

    from softprompt.serve.batcher import DynamicBatcher
    from softprompt.serve.metrics import Metrics

    seen = []

    class Recording:
        def step(self):
            seen.append(torch.get_num_threads())
            return []

    before = torch.get_num_threads()
    batcher = DynamicBatcher(tiny_llama, Metrics())
    assert batcher.decode_threads == max(1, before - 1)
    batcher = DynamicBatcher(tiny_llama, Metrics(), decode_threads=3)
    batcher._decoder = Recording()
    batcher._step()
    assert seen == [3] and torch.get_num_threads() == before   # prefills get every thread back
