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
