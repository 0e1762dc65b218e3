"""The inference server, in process (ASGI test client) on a tiny backbone: every endpoint and error path."""

import json
import threading
import time

import pytest
import served
import tiny

from softprompt import generate, save_prompt


@pytest.fixture
def prompt_dir(tmp_path, tiny_llama):
    folder = tmp_path / "prompts"
    folder.mkdir()
    save_prompt(folder / "sentiment.safetensors", tiny.classifier(tiny_llama, "prefix", 5, 1, ["positive=great"]))
    save_prompt(folder / "sentiment-suffix.safetensors", tiny.classifier(tiny_llama, "suffix", 3, 2))
    save_prompt(folder / "qa.safetensors", tiny.generator(tiny_llama, 4, 3))
    (folder / "notes.txt").write_text("not a prompt")
    return folder


@pytest.fixture
def client(tiny_llama, prompt_dir):
    with served.client(tiny_llama, prompt_dir) as test_client:
        yield test_client


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == status and body["message"]
    return body["message"]


def test_health_models_prompts_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok", "backbone": "tiny-llama", "prompts": 3,
                                             "engine": "torch"}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qa", "sentiment", "sentiment-suffix"]
    prompts = {p["name"]: p for p in client.get("/v1/prompts").json()["data"]}
    assert prompts["sentiment"]["task"] == "classification" and prompts["sentiment"]["labels"] == ["negative", "positive"]
    assert prompts["qa"]["task"] == "generation" and prompts["qa"]["num_virtual_tokens"] == 4
    client.get("/v1/nowhere")
    text = client.get("/metrics").text
    assert 'softprompt_requests_total{endpoint="/healthz",status="200"} 1.0' in text
    assert 'softprompt_request_errors_total{endpoint="unmatched",status="404"} 1.0' in text
    assert "softprompt_request_latency_seconds_bucket" in text and "softprompt_prompts_loaded 3.0" in text


def test_classify_matches_the_bank_and_keeps_order(client):
    bank = client.app.state.bank
    inputs = ["a great film", "boring and bad", "the quick brown fox jumps over the lazy dog"]
    response = client.post("/v1/classify", json={"prompt": "sentiment", "inputs": inputs})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3
    for text, result in zip(inputs, results):
        alone = bank.classify([("sentiment", text)])[0]
        assert result["label"] == alone.label
        assert result["scores"] == pytest.approx(alone.scores, abs=1e-4)
    mapped = client.post("/v1/classify", json={"prompt": "sentiment-suffix", "inputs": [{"text": "great"}]})
    alone = bank.classify([("sentiment-suffix", "great")])[0]
    assert mapped.status_code == 200 and mapped.json()["results"][0]["label"] == alone.label
    assert mapped.json()["results"][0]["scores"] == pytest.approx(alone.scores, abs=1e-4)


def test_classify_errors(client):
    assert "no prompt named 'nope'" in _error(client.post("/v1/classify", json={"prompt": "nope", "inputs": ["x"]}), 404)
    assert "generation prompt" in _error(client.post("/v1/classify", json={"prompt": "qa", "inputs": ["x"]}), 422)
    assert "--max-inputs" in _error(client.post("/v1/classify", json={"prompt": "sentiment", "inputs": ["x"] * 9}), 413)
    long_text = " ".join(["word"] * 60)
    assert "--max-input-tokens" in _error(client.post("/v1/classify", json={"prompt": "sentiment",
                                                                          "inputs": [long_text]}), 413)
    assert "inputs" in _error(client.post("/v1/classify", json={"prompt": "sentiment"}), 422)
    assert "inputs" in _error(client.post("/v1/classify", json={"prompt": "sentiment", "inputs": []}), 422)
    assert "missing field" in _error(client.post("/v1/classify", json={"prompt": "sentiment",
                                                                      "inputs": [{"review": "x"}]}), 422)
    assert "invalid request body" in _error(client.post("/v1/classify", content=b"{not json",
                                                        headers={"content-type": "application/json"}), 422)
    big = json.dumps({"prompt": "sentiment", "inputs": ["x" * 250_000]})
    assert "--max-body-bytes" in _error(client.post("/v1/classify", content=big,
                                                    headers={"content-type": "application/json"}), 413)
    chunked = client.post("/v1/classify", content=iter([b'{"prompt": "sentiment", ', b'"inputs": ["x"]}']),
                          headers={"content-type": "application/json"})
    assert "Content-Length" in _error(chunked, 411)
    assert client.get("/healthz").status_code == 200  # the server keeps serving


def test_serve_cli_refuses_a_missing_folder(tmp_path, capsys):
    from softprompt.cli import main

    assert main(["serve", "--model", "tiny", "--prompts", str(tmp_path / "nope")]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_completions_equal_generate_and_stream(client):
    model = client.app.state.bank.get("qa")
    expected = generate(model, [{"text": "the quick brown fox"}], max_new_tokens=10)[0]
    body = {"model": "qa", "prompt": "the quick brown fox", "max_tokens": 10, "temperature": 0}
    response = client.post("/v1/completions", json=body).json()
    assert response["object"] == "text_completion" and response["choices"][0]["text"] == expected
    assert response["choices"][0]["finish_reason"] in ("stop", "length")
    assert response["usage"]["completion_tokens"] <= 10 and response["usage"]["prompt_tokens"] > 4

    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")

    many = client.post("/v1/completions", json={**body, "prompt": ["great", "the lazy dog"], "n": 2,
                                                 "temperature": 1.0, "seed": 5}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    again = client.post("/v1/completions", json={**body, "prompt": ["great", "the lazy dog"], "n": 2,
                                                  "temperature": 1.0, "seed": 5}).json()
    assert [c["text"] for c in many["choices"]] == [c["text"] for c in again["choices"]]  # seeded


def test_chat_completions_and_errors(client):
    model = client.app.state.bank.get("qa")
    expected = generate(model, [{"text": "great"}], max_new_tokens=6)[0]
    body = {"model": "qa", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "great"}], "max_tokens": 6, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body).json()
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"] == {"role": "assistant", "content": expected}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"]

    assert "no prompt named" in _error(client.post("/v1/chat/completions", json={**body, "model": "x"}), 404)
    assert "--max-new-tokens" in _error(client.post("/v1/chat/completions", json={**body, "max_tokens": 99}), 422)
    assert "user" in _error(client.post("/v1/chat/completions",
                                        json={**body, "messages": [{"role": "system", "content": "hi"}]}), 422)
    assert "temperature" in _error(client.post("/v1/completions", json={"model": "qa", "prompt": "x",
                                                                        "temperature": 7}), 422)


def test_admin_upload_replace_delete(client, prompt_dir, tiny_llama, tmp_path):
    data = (prompt_dir / "sentiment.safetensors").read_bytes()
    auth = {"Authorization": f"Bearer {served.TOKEN}"}
    assert "Bearer" in _error(client.post("/v1/prompts?name=copy", content=data), 401)
    assert "Bearer" in _error(client.post("/v1/prompts?name=copy", content=data,
                                          headers={"Authorization": "Bearer wrong"}), 401)
    created = client.post("/v1/prompts?name=copy", content=data, headers=auth)
    assert created.status_code == 201 and created.json()["replaced"] is False
    assert (prompt_dir / "copy.safetensors").read_bytes() == data
    assert client.post("/v1/classify", json={"prompt": "copy", "inputs": ["great"]}).status_code == 200
    replaced = client.post("/v1/prompts?name=copy", content=data, headers=auth)
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True

    for bad in ["../evil", ".hidden", "a/b", "x.safetensors", "a..b"]:
        assert "not allowed" in _error(client.post("/v1/prompts", params={"name": bad}, content=data,
                                                   headers=auth), 422)
    import pickle
    assert "safetensors" in _error(client.post("/v1/prompts?name=pickled", content=pickle.dumps({"a": 1}),
                                               headers=auth), 422)
    other = tiny.tiny_backbone("llama", seed=9)
    foreign = save_prompt(tmp_path / "foreign.safetensors", tiny.classifier(other, "prefix", 5, 1))
    refusal = _error(client.post("/v1/prompts?name=foreign", content=foreign.read_bytes(), headers=auth), 409)
    assert "fingerprint" in refusal and "--model" not in refusal  # no command-line advice to an HTTP client
    for message in (refusal, _error(client.post("/v1/prompts?name=junk", content=b"junk" * 9, headers=auth), 422)):
        assert str(prompt_dir) not in message and ".upload" not in message  # nothing of the server's paths
        assert message.startswith("the uploaded file for ")
    assert "empty body" in _error(client.post("/v1/prompts?name=empty", content=b"", headers=auth), 422)
    assert sorted(p.name for p in prompt_dir.iterdir()) == [  # nothing half-written left behind
        "copy.safetensors", "notes.txt", "qa.safetensors", "sentiment-suffix.safetensors", "sentiment.safetensors"]

    assert client.delete("/v1/prompts/copy", headers=auth).json() == {"deleted": "copy"}
    assert not (prompt_dir / "copy.safetensors").exists()
    assert "no prompt named" in _error(client.delete("/v1/prompts/copy", headers=auth), 404)
    assert "no prompt named" in _error(client.post("/v1/classify", json={"prompt": "copy", "inputs": ["x"]}), 404)


def test_admin_endpoints_off_without_a_token(tiny_llama, prompt_dir):
    with served.client(tiny_llama, prompt_dir, admin_token=None) as client:
        assert "--admin-token" in _error(client.delete("/v1/prompts/qa", headers={"Authorization": "Bearer x"}), 403)
        assert "qa" in client.app.state.bank


def test_prompt_folder_is_watched(tiny_llama, prompt_dir):
    with served.client(tiny_llama, prompt_dir, reload_interval=0.1) as client:
        source = prompt_dir / "sentiment.safetensors"
        (prompt_dir / "fresh.safetensors").write_bytes(source.read_bytes())
        (prompt_dir / "broken.safetensors").write_bytes(b"garbage")
        deadline = time.time() + 10
        while "fresh" not in client.app.state.bank and time.time() < deadline:
            time.sleep(0.05)
        assert client.post("/v1/classify", json={"prompt": "fresh", "inputs": ["great"]}).status_code == 200
        assert "broken" not in client.app.state.bank  # reported, not served; the rest keep serving
        (prompt_dir / "fresh.safetensors").unlink()
        deadline = time.time() + 10
        while "fresh" in client.app.state.bank and time.time() < deadline:
            time.sleep(0.05)
        assert _error(client.post("/v1/classify", json={"prompt": "fresh", "inputs": ["great"]}), 404)


def test_concurrent_requests_batch_across_prompts_and_survive_swaps(tiny_llama, prompt_dir):
    with served.client(tiny_llama, prompt_dir, batch_wait_ms=150) as client:
        data = (prompt_dir / "sentiment.safetensors").read_bytes()
        statuses: list[int] = []
        lock = threading.Lock()

        def call(i):
            if i % 3 == 2:
                r = client.post("/v1/completions", json={"model": "qa", "prompt": f"row {i}", "max_tokens": 4})
            else:
                name = "sentiment" if i % 3 == 0 else "sentiment-suffix"
                r = client.post("/v1/classify", json={"prompt": name, "inputs": [f"review {i}"]})
            with lock:
                statuses.append(r.status_code)

        def swap():
            for _ in range(5):
                r = client.post("/v1/prompts?name=sentiment", content=data,
                                headers={"Authorization": f"Bearer {served.TOKEN}"})
                with lock:
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)] + [threading.Thread(target=swap)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses.count(200) == 17  # 12 requests + 5 replacements, none failed
        text = client.get("/metrics").text
        multi = [line for line in text.splitlines() if line.startswith("softprompt_batch_prompts_bucket")]
        one_prompt = float(next(line for line in multi if 'le="1.0"' in line).split()[-1])
        total = float(next(line for line in text.splitlines() if line.startswith("softprompt_batch_prompts_count")).split()[-1])
        assert total > one_prompt  # at least one batch held rows of several prompts


def test_hostile_requests_get_a_json_4xx_never_a_500(client):
    """Requests that used to answer 500: a lone surrogate, a seed past a generator's range, a non-ASCII token,
    a prompt name ending in a newline."""
    surrogate = b'{"prompt": "sentiment", "inputs": ["\\ud800"]}'
    assert "surrogate" in _error(client.post("/v1/classify", content=surrogate,
                                             headers={"content-type": "application/json"}), 422)
    chat = b'{"model": "qa", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'
    assert "surrogate" in _error(client.post("/v1/chat/completions", content=chat,
                                             headers={"content-type": "application/json"}), 422)
    _error(client.post("/v1/completions", json={"model": "qa", "prompt": "x", "seed": 2**64}), 422)
    _error(client.delete("/v1/prompts/qa", headers={"Authorization": "Bearer s3cret-tok\u00e9n".encode("latin-1")}),
           401)
    body = client.get("/v1/prompts").json()
    assert "qa" in [p["name"] for p in body["data"]]
    _error(client.post("/v1/prompts", params={"name": "x\n"}, content=b"x", headers={"Authorization": f"Bearer {served.TOKEN}"}),
           422)


def test_the_openapi_schema_declares_what_the_server_answers(client):
    """Every error a route can answer is declared in the documented error shape; /metrics is plain text; a 405
    carries the Allow header (RFC 9110)."""
    schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]["responses"]
    assert {"200", "404", "413", "422"} <= set(classify)
    assert classify["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"401", "403", "409", "422"} <= set(schema["paths"]["/v1/prompts"]["post"]["responses"])
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    response = client.put("/v1/classify", json={})
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    assert response.json()["error"]["code"] == 405


def test_a_full_disk_during_an_upload_is_a_507_and_changes_nothing(client, prompt_dir, monkeypatch):
    import errno

    import softprompt.serve.directory as directory

    data = (prompt_dir / "sentiment-suffix.safetensors").read_bytes()
    before = {p.name: p.read_bytes() for p in prompt_dir.iterdir()}
    auth = {"Authorization": f"Bearer {served.TOKEN}"}

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = directory.os.fdopen

    class HalfWriter:  # writes half the bytes, then the disk is full
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, payload):
            self.handle.write(payload[: len(payload) // 2])
            full()

    for target, replacement in ((directory.os, "replace"), (directory.os, "fdopen")):
        with monkeypatch.context() as patch:
            patch.setattr(target, replacement, full if replacement == "replace" else HalfWriter)
            for name in ("sentiment", "brand-new"):  # replacing a served prompt, and a new one
                message = _error(client.post(f"/v1/prompts?name={name}", content=data, headers=auth), 507)
                assert "No space left" in message and str(prompt_dir) not in message
        assert {p.name: p.read_bytes() for p in prompt_dir.iterdir()} == before  # no temp file, nothing replaced
    assert client.post("/v1/classify", json={"prompt": "sentiment", "inputs": ["great"]}).status_code == 200
    assert "brand-new" not in client.app.state.bank
