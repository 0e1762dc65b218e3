"""vLLM as a serving target, against a real vLLM server (`make install-vllm`) on the real SmolLM2-135M in fp32.

The client's scores equal the torch engine's on 200 rotten_tomatoes rows and with multi-token label words; greedy
generations are identical; `serve --engine vllm` answers the same API with the same results; a prompt file
exported with `--format vllm` classifies through the stock server; what vLLM cannot take is refused in one line.
"""

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import system
import torch
from fastapi.testclient import TestClient

import softprompt as sp
from softprompt.cli import main
from softprompt.clients.vllm import VLLMClient, VLLMError, require_input_embeddings
from softprompt.hub import builtin_backbone_dir
from softprompt.inference.bank import PromptBank
from softprompt.inference.batch import Request
from softprompt.inference.engine import run_requests
from softprompt.cli.common import free_port
from softprompt.serve import ServeSettings, create_app
from softprompt.serve.vllm_engine import VLLM_VENV, check_same_backbone, started_vllm_server, vllm_command

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4  # fp32 on both sides


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    python = ROOT / VLLM_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import vllm"], capture_output=True).returncode:
        system.unavailable(f"needs vLLM in {VLLM_VENV}/: make install-vllm (make test does this)")
    port = free_port()
    command = vllm_command(str(python), str(builtin_backbone_dir("smollm2-135m")), port, dtype="float32",
                           max_model_len=2048, extra=["--enforce-eager"])
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with started_vllm_server(command, port, log, startup_timeout=600) as url:
        yield url


@pytest.fixture(scope="module")
def smollm():
    return sp.load_backbone("smollm2-135m", dtype=torch.float32)


def _classifier(backbone, words=None, seed=0, n=12):
    torch.manual_seed(seed)
    template = sp.build_template("Review: {text}\nSentiment: {label}", "prefix", n)
    verbalizer = sp.Verbalizer.from_spec(["negative", "positive"], words)
    return sp.PromptedModel(backbone, sp.SoftPrompt(torch.randn(n, backbone.hidden_size) * 0.3), template,
                            verbalizer, max_length=256)


def _generator(backbone, seed=0, n=8):
    torch.manual_seed(seed)
    return sp.PromptedModel(backbone, sp.SoftPrompt(torch.randn(n, backbone.hidden_size) * 0.3),
                            sp.build_template("Q: {text}\nA: {target}", "prefix", n), None, max_length=256)


def _torch_scores(model, texts):
    with torch.no_grad():
        return torch.cat([model.class_scores(model.make_batch([{"text": t} for t in texts[i:i + 32]],
                                                              label_field=None))
                          for i in range(0, len(texts), 32)])


def _same_labels_where_decided(results, ours, labels):
    """Labels agree on every row whose class scores are further apart than the tolerance allows to flip."""
    margin = (ours[:, 0] - ours[:, 1]).abs()
    wanted = [labels[i] for i in ours.argmax(-1).tolist()]
    return all(r.label == w for r, w, m in zip(results, wanted, margin.tolist()) if m > 2 * TOLERANCE)


def test_scores_equal_the_torch_engine_on_200_rotten_tomatoes_rows(vllm_url, smollm):
    model = _classifier(smollm)
    texts = [row["text"] for row in sp.load_task("rotten_tomatoes").test[:200]]
    ours = _torch_scores(model, texts)
    theirs = VLLMClient(vllm_url).classify(model, texts)
    got = torch.tensor([[r.scores[label] for label in model.labels] for r in theirs])
    assert got.shape == ours.shape == (200, 2)
    gap = (got - ours).abs().max().item()
    assert gap < TOLERANCE, gap
    assert _same_labels_where_decided(theirs, ours, model.labels)


def test_multi_token_label_words_and_several_words_per_class(vllm_url, smollm):
    words = {"negative": ["dreadful", "a waste of time"], "positive": ["wonderful", "worth watching"]}
    model = _classifier(smollm, words, seed=1)
    assert max(len(ids) for ids in model.word_ids) >= 3
    texts = [row["text"] for row in sp.load_task("rotten_tomatoes").test[200:240]]
    ours = _torch_scores(model, texts)
    theirs = VLLMClient(vllm_url).classify(model, texts)
    got = torch.tensor([[r.scores[label] for label in model.labels] for r in theirs])
    assert (got - ours).abs().max().item() < TOLERANCE
    gaps = (ours[:, 0] - ours[:, 1]).abs()
    assert gaps.min().item() < 1.0  # near-ties are part of the test, and still agree
    assert _same_labels_where_decided(theirs, ours, model.labels)


def test_a_dept_prompt_its_text_offsets_included(vllm_url, smollm):
    from softprompt.methods.dept import DecomposedPrompt

    torch.manual_seed(5)
    d = smollm.hidden_size
    prompt = DecomposedPrompt(torch.randn(6, d) * 0.3, torch.randn(256, 4) * 0.5, torch.randn(4, d) * 0.02)
    model = sp.PromptedModel(smollm, prompt, sp.build_template("Review: {text}\nSentiment: {label}", "prefix", 6),
                             sp.Verbalizer.from_spec(["negative", "positive"]), max_length=256)
    plain = sp.PromptedModel(smollm, sp.SoftPrompt(prompt().detach()), model.template, model.verbalizer,
                             max_length=256)
    texts = [row["text"] for row in sp.load_task("rotten_tomatoes").test[:12]]
    ours = _torch_scores(model, texts)
    assert (ours - _torch_scores(plain, texts)).abs().max().item() > 1e-2  # the offsets change the scores
    got = VLLMClient(vllm_url).classify(model, texts)
    diffs = [abs(r.scores[label] - float(ours[i, j])) for i, r in enumerate(got) for j, label in enumerate(model.labels)]
    assert max(diffs) < TOLERANCE, (max(diffs), ours.abs().max().item())


def test_greedy_generations_are_identical_and_stream_in_pieces(vllm_url, smollm):
    model = _generator(smollm)
    client = VLLMClient(vllm_url)
    questions = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?"]
    expected = run_requests(smollm, [Request(model, q, "generate", max_new_tokens=20) for q in questions])
    for question, want in zip(questions, expected):
        got = client.generate(model, question, max_new_tokens=20)
        assert (got.text, got.completion_tokens, got.prompt_tokens) == (want.text, want.completion_tokens,
                                                                         want.prompt_tokens)
        pieces = []
        streamed = client.generate(model, question, max_new_tokens=20, on_text=pieces.append)
        assert streamed.text == want.text and len(pieces) > 1 and "".join(pieces) == want.text
    stop = expected[0].text.split()[1]  # a word inside the greedy answer
    cut = client.generate(model, questions[0], max_new_tokens=20, stop=[stop])
    assert cut.finish_reason == "stop" and stop not in cut.text and expected[0].text.startswith(cut.text)


def _deep(backbone):
    """A deep prompt (4 prefix tokens in every layer) for the classification template."""
    torch.manual_seed(0)
    layers, heads, dim = backbone.kv_layout()
    prompt = sp.DeepPrompt(torch.randn(layers, 4, heads, dim) * 0.1, torch.randn(layers, 4, heads, dim) * 0.1,
                           backbone.hidden_size)
    return sp.PromptedModel(backbone, prompt, sp.Template.parse("Review: {text}\nSentiment: {label}"),
                            sp.Verbalizer.from_spec(["negative", "positive"]), max_length=128)


def test_what_vllm_cannot_take_is_refused_in_one_line(smollm):
    with pytest.raises(sp.ConfigError, match="deep prompt .* --engine torch"):
        require_input_embeddings(_deep(smollm))
    with pytest.raises(VLLMError, match="vLLM server http://127.0.0.1:9: ConnectError"):
        VLLMClient("http://127.0.0.1:9").classify(_classifier(smollm), ["x"])


def test_serve_engine_vllm_answers_like_the_torch_engine(vllm_url, smollm, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    sp.save_prompt(folder / "rt.safetensors", _classifier(smollm, seed=2))
    sp.save_prompt(folder / "qa.safetensors", _generator(smollm, seed=3))
    texts = ["A three-hour cinema master class.", "A tedious, joyless slog.", "It is what it is."]
    answers = {}
    for engine in ("torch", "vllm"):
        client = VLLMClient(vllm_url) if engine == "vllm" else None
        app = create_app(PromptBank(smollm), folder, vllm=client)
        with TestClient(app) as http:
            assert http.get("/healthz").json()["engine"] == engine
            scores = http.post("/v1/classify", json={"prompt": "rt", "inputs": texts}).json()["results"]
            completion = http.post("/v1/completions", json={"model": "qa", "prompt": ["Name a colour.", "Q?"],
                                                            "max_tokens": 12, "temperature": 0}).json()
            with http.stream("POST", "/v1/completions", json={"model": "qa", "prompt": "Name a colour.",
                                                              "max_tokens": 12, "temperature": 0,
                                                              "stream": True}) as events:
                streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in events.iter_lines()
                                   if line.startswith("data: {"))
            chat = http.post("/v1/chat/completions", json={"model": "qa", "max_tokens": 8, "temperature": 0,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
            assert chat.status_code == 200, chat.text
            metrics = http.get("/metrics").text
            answers[engine] = (scores, [c["text"] for c in completion["choices"]], streamed,
                               chat.json()["choices"][0]["message"]["content"])
            assert "softprompt_finished_rows_total" in metrics
    torch_scores, vllm_scores = answers["torch"][0], answers["vllm"][0]
    for a, b in zip(torch_scores, vllm_scores):
        assert a["label"] == b["label"]
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) < TOLERANCE
    assert answers["torch"][1:] == answers["vllm"][1:]  # greedy completions, streamed and chat: identical
    assert answers["vllm"][2] == answers["vllm"][1][0]


def test_serve_engine_vllm_refuses_a_deep_prompt_upload_and_a_server_of_another_model(vllm_url, smollm, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    deep_file = sp.save_prompt(tmp_path / "deep.safetensors", _deep(smollm))
    app = create_app(PromptBank(smollm), folder, ServeSettings(admin_token="secret"), vllm=VLLMClient(vllm_url))
    with TestClient(app) as http:
        answer = http.post("/v1/prompts?name=deep", content=deep_file.read_bytes(),
                           headers={"Authorization": "Bearer secret"})
        assert 400 <= answer.status_code < 500 and "--engine torch" in answer.json()["error"]["message"]
        assert not (folder / "deep.safetensors").exists()
    shifted = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    with torch.no_grad():  # the same architecture with other weights: the check must notice
        shifted.model.get_input_embeddings().weight.mul_(1.5)
    with pytest.raises(sp.ConfigError, match="differ from --model"):
        asyncio.run(check_same_backbone(VLLMClient(vllm_url), shifted))
    assert asyncio.run(check_same_backbone(VLLMClient(vllm_url), smollm)) < 1e-3


def test_serve_cli_with_vllm_url_and_an_unreachable_one(vllm_url, tmp_path, capsys):
    folder = tmp_path / "prompts"
    folder.mkdir()
    threads = torch.get_num_threads()
    code = main(["serve", "--model", "smollm2-135m", "--prompts", str(folder), "--engine", "vllm", "--vllm-url",
                 "http://127.0.0.1:9", "--precision", "fp32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "127.0.0.1:9" in err, err
    assert torch.get_num_threads() == threads  # serving gave vLLM the cores; the caller gets them back
    assert main(["serve", "--model", "smollm2-135m", "--prompts", str(folder), "--vllm-url", vllm_url]) == 2
    assert "apply to --engine vllm" in capsys.readouterr().err
    assert _serve_and_classify(folder, "--vllm-url", vllm_url)["engine"] == "vllm"


def test_serve_cli_starts_its_own_vllm_server_and_stops_it(tmp_path, smollm):
    """The main path: `serve --engine vllm` starts vLLM from .venv-vllm for --model, serves through it, and the
    vLLM server goes when softprompt stops."""
    import psutil

    folder = tmp_path / "prompts"
    folder.mkdir()
    model = _classifier(smollm, seed=6)
    sp.save_prompt(folder / "rt.safetensors", model)
    children = []
    health = _serve_and_classify(folder, "--vllm-args", "--enforce-eager --max-model-len 2048",
                                 "--tensor-parallel-size", "1", seen=children,
                                 expect=_torch_scores(model, [REVIEW])[0].tolist())
    assert health["engine"] == "vllm" and children  # the vLLM server ran as our child ...
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]  # ... and is gone


REVIEW = "A three-hour cinema master class."


def _serve_and_classify(folder, *options, seen=None, expect=None):
    """Run `softprompt serve --engine vllm OPTIONS` until /healthz answers, classify REVIEW with the folder's `rt`
    prompt (its scores must equal `expect`, the torch path's), stop it with SIGINT; returns /healthz. `seen`
    receives the server's child processes (psutil) while it runs."""
    import psutil

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "softprompt", "serve", "--model", "smollm2-135m", "--prompts",
                                str(folder), "--engine", "vllm", "--precision", "fp32", "--port", str(port),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(process.communicate(timeout=30)[0][-3000:] if process.poll() is not None
                                     else "no answer")
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        if seen is not None:
            seen.extend(psutil.Process(process.pid).children(recursive=True))
        if expect is not None:
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", timeout=120,
                                json={"prompt": "rt", "inputs": [REVIEW]})
            assert answer.status_code == 200, answer.text
            scores = answer.json()["results"][0]["scores"]
            assert max(abs(scores[label] - want) for label, want in zip(("negative", "positive"), expect)) < TOLERANCE
        return health
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)


def test_export_vllm_folder_classifies_through_the_stock_server(vllm_url, smollm, tmp_path):
    model = _classifier(smollm, seed=4)
    prompt = sp.save_prompt(tmp_path / "rt.safetensors", model)
    out = tmp_path / "rt-vllm"
    assert main(["export", str(prompt), str(out), "--format", "vllm",
                 "--base-model", str(builtin_backbone_dir("smollm2-135m"))]) == 0
    manifest = json.loads((out / "vllm.json").read_text())
    assert manifest["serve"].endswith("--enable-prompt-embeds") and manifest["num_virtual_tokens"] == 12
    vectors = torch.load(out / "soft_tokens.pt", weights_only=True)
    assert torch.equal(vectors, model.prompt().detach().float())
    exported = sp.from_pretrained(out, smollm)
    texts = ["A three-hour cinema master class.", "A tedious, joyless slog."]
    got = VLLMClient(vllm_url).classify(exported, texts)
    ours = _torch_scores(model, texts)
    assert max(abs(r.scores[label] - float(ours[i, j])) for i, r in enumerate(got)
               for j, label in enumerate(model.labels)) < TOLERANCE
    shutil.rmtree(out)
