"""The real server process on a free loopback port, driven by the official `openai` client."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
import served
import torch

from softprompt import PromptedModel, SoftPrompt, Verbalizer, build_template, generate, load_backbone, save_prompt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    backbone = load_backbone(tiny_model_dir, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    qa = PromptedModel(backbone, SoftPrompt(torch.randn(4, backbone.hidden_size) * 0.5),
                       build_template("Q: {text}\nA: {target}", "prefix", 4), None, max_length=64)
    save_prompt(folder / "qa.safetensors", qa)
    sentiment = PromptedModel(backbone, SoftPrompt(torch.randn(3, backbone.hidden_size) * 0.5),
                              build_template("{text} Sentiment: {label}", "prefix", 3),
                              Verbalizer.from_spec(["negative", "positive"]), max_length=64)
    save_prompt(folder / "sentiment.safetensors", sentiment)
    port = _free_port()
    env = {**os.environ, "SOFTPROMPT_ADMIN_TOKEN": "t0ken"}
    process = subprocess.Popen([sys.executable, "-m", "softprompt", "serve", "--model", tiny_model_dir,
                                "--prompts", str(folder), "--port", str(port), "--precision", "fp32",
                                "--max-input-tokens", "64", "--log-level", "warning"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if json.load(response)["prompts"] == 2:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"server did not start: {process.stdout.read()}")
        time.sleep(0.3)
    yield url, {"qa": qa, "sentiment": sentiment}
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_openai_client_against_the_real_server(server):
    url, models = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["qa", "sentiment"]
    expected = generate(models["qa"], [{"text": "the quick brown fox"}], max_new_tokens=8)[0]

    completion = client.completions.create(model="qa", prompt="the quick brown fox", max_tokens=8, temperature=0)
    assert completion.choices[0].text == expected and completion.usage.completion_tokens <= 8
    pieces = [c.choices[0].text for c in client.completions.create(model="qa", prompt="the quick brown fox",
                                                                   max_tokens=8, temperature=0, stream=True)]
    assert "".join(pieces) == expected

    chat = client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "the quick brown fox"}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == expected
    streamed = client.chat.completions.create(model="qa", max_tokens=8, temperature=0, stream=True,
                                              messages=[{"role": "user", "content": "the quick brown fox"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected

    with pytest.raises(openai.NotFoundError, match="no prompt named"):
        client.completions.create(model="missing", prompt="x", max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError, match="max-new-tokens"):
        client.completions.create(model="qa", prompt="x", max_tokens=100_000)

    classify = client.post("/classify", cast_to=object, body={"prompt": "sentiment", "inputs": ["great", "bad"]})
    scores = models["sentiment"].class_scores(models["sentiment"].make_batch([{"text": "great"}, {"text": "bad"}],
                                                                             label_field=None))
    assert [r["label"] for r in classify["results"]] == [["negative", "positive"][int(i)] for i in scores.argmax(-1)]


def test_the_real_server_answers_as_its_schema_says(server):
    """Schemathesis against the `softprompt serve` process over real HTTP (the in-process run has more examples)."""
    import schemathesis
    from api_routes import ROUTES

    url, _ = server
    assert served.fuzz_every_route(schemathesis.openapi.from_url(f"{url}/openapi.json"), "t0ken", 12) == ROUTES
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        assert json.load(response)["status"] == "ok"  # still up


def test_a_body_refused_early_reaches_a_client_still_sending_as_a_413(server):
    """The limit is checked on Content-Length before the body is read; a client that goes on sending must still
    read the 413 (no connection reset under its feet)."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    size = 64 << 20  # far over the default --max-body-bytes (4 MiB)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        chunk, sent = b"x" * 65536, 0
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server may stop reading once it has answered; the answer must still be there to read
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


@pytest.mark.parametrize("stream", [False, True], ids=["request", "stream"])
def test_a_client_that_disconnects_frees_its_rows(server, stream):
    """A client gone mid-request or mid-stream: its queued rows never run and its generating rows stop at their
    next token, so the server's queue empties and far fewer tokens are generated than were asked for."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    abandoned, generated = _metric(url, "softprompt_abandoned_rows_total"), _metric(
        url, "softprompt_generated_tokens_total")
    finished = _metric(url, "softprompt_finished_rows_total")
    body = json.dumps({"model": "qa", "prompt": "tell me everything", "n": 16, "max_tokens": 256,
                       "temperature": 1.0, "seed": 1, "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        if stream:
            received = b""
            while b"data: " not in received:  # the first generated text has arrived: rows are mid-generation
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
        else:
            time.sleep(0.3)
    def accounted() -> tuple[float, float]:  # rows abandoned, rows that ended (by end-of-sequence) before the client left
        return (_metric(url, "softprompt_abandoned_rows_total") - abandoned,
                _metric(url, "softprompt_finished_rows_total") - finished)

    deadline = time.time() + 60
    while time.time() < deadline and sum(accounted()) < 16:
        time.sleep(0.1)
    cut, ended = accounted()
    assert cut + ended == 16  # every row is accounted for once (rows leave a running decoder one by one)
    assert _metric(url, "softprompt_queue_rows") == 0
    time.sleep(1.0)  # a batch still running would go on adding tokens
    assert _metric(url, "softprompt_generated_tokens_total") - generated < 16 * 256 / 2
    # The same seeded request run to its end: only rows that end by end-of-sequence can have ended above.
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps({**json.loads(body), "stream": False})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        reasons = [choice["finish_reason"] for choice in json.load(response)["choices"]]
    assert ended <= reasons.count("stop") < 16
