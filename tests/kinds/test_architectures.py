"""The architecture matrix: every causal-LM architecture in tests/architectures.py scores like a plain transformers
forward of the same input vectors, whatever shares its batch, on inputs shorter and longer than any sliding window.
"""

import pytest
import torch
from architectures import ARCHITECTURES, tiny_arch_backbone, tiny_causal_lm

from softprompt import BackboneError, PromptedModel, SoftPrompt, Verbalizer, build_template
from softprompt.inference.batch import Request, run_batch, start_batch

SHORT = {"text": "great fun"}
LONG = {"text": "the plot is thin but the acting is good and warm, funny and moving " * 2}  # > any window


def test_the_matrix_covers_the_features_it_promises():
    assert len(ARCHITECTURES) >= 25
    described = " ".join(arch.features for arch in ARCHITECTURES)
    for feature in ("rotary", "ALiBi", "learned", "sliding", "hybrid", "soft-capping", "mixture of experts",
                    "multi-query", "grouped-query", "parallel", "state-space"):
        assert feature in described, feature


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if not a.keys_values], ids=lambda arch: arch.name)
def test_models_without_keys_values_run_rows_whole(arch):
    """State-space and recurrent layers keep no keys/values: such a backbone says so, runs no cached prompt prefix
    (the rows run whole), and its left padding is exact (the layers mask padded inputs)."""
    backbone = tiny_arch_backbone(arch)
    assert not backbone.keeps_keys_values and backbone._pads_exactly()
    model = _classifier(backbone)
    assert model.prompt_prefix_length > 0 and model.cache_plan() == (0, 0) and not model.split_frozen_input


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if not a.keys_values], ids=lambda arch: arch.name)
def test_a_dry_run_estimates_a_prompt_and_refuses_a_deep_one(arch, tmp_path):
    from softprompt import ConfigError, TrainConfig
    from softprompt.tools.memory import estimate_training_memory

    model = tiny_causal_lm(arch)
    model.save_pretrained(tmp_path)
    config = dict(model=str(tmp_path), data="rotten_tomatoes", device="cpu", batch_size=2, max_length=32)
    estimate = estimate_training_memory(TrainConfig(**config, num_virtual_tokens=4))
    rows = {component: size for component, size, _ in estimate.rows}
    assert rows["prompt + grad + AdamW"] == 4 * model.config.hidden_size * 16 and rows["activations"] > 0
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match=f"a {arch.name} model has layers without keys/values") as err:
        estimate_training_memory(TrainConfig(**config, method="deep"))
    assert "\n" not in str(err.value) and "use --method prompt" in str(err.value)


def test_the_cli_trains_and_evaluates_a_state_space_model_quietly(tmp_path, sentiment_dir):
    """A user's Mamba folder through `softprompt train` and `eval` on a CPU: it works, stderr holds softprompt's own
    lines (no kernel warnings that name nothing to install), and `--method deep` is one line with exit code 2."""
    import json
    import subprocess
    import sys

    from tiny import tiny_tokenizer

    folder = tmp_path / "tiny-mamba"
    tiny_causal_lm(next(arch for arch in ARCHITECTURES if arch.name == "mamba")).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "softprompt", *args], capture_output=True, text=True,
                              timeout=300)

    common = ["--model", str(folder), "--data", str(sentiment_dir), "--max-steps", "2", "--batch-size", "4",
              "--num-virtual-tokens", "4", "--device", "cpu", "--compile", "off"]
    trained = cli("train", *common, "--output", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    assert "falling back" not in trained.stderr and "Traceback" not in trained.stderr, trained.stderr
    evaluated = cli("eval", "--prompt", str(tmp_path / "run" / "prompt.safetensors"), "--model", str(folder),
                    "--data", str(sentiment_dir), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0 < json.loads(evaluated.stdout)["n"] and "falling back" not in evaluated.stderr
    deep = cli("train", *common, "--method", "deep", "--output", str(tmp_path / "deep"))
    lines = deep.stderr.strip().splitlines()
    assert deep.returncode == 2 and len(lines) == 1 and "(mamba) has layers without keys/values" in lines[0], \
        deep.stderr


def test_a_model_whose_padding_moves_its_rows_is_refused_in_one_line(monkeypatch):
    """A backbone without keys/values whose layers let padding into a row cannot be batched: one line, no traceback."""
    from tiny import tiny_tokenizer

    from softprompt.kinds.causal_lm.backbone import CausalLMBackbone

    mamba = next(arch for arch in ARCHITECTURES if arch.name == "mamba")
    model = tiny_causal_lm(mamba)
    for layer in model.backbone.layers:  # the mixer no longer masks padded inputs
        monkeypatch.setattr(layer.mixer, "forward", lambda hidden, cache=None, attention_mask=None, _f=layer.mixer.forward,
                            **kw: _f(hidden, cache=cache, attention_mask=None, **kw))
    with pytest.raises(BackboneError, match="a mamba model's layers without keys/values") as err:
        CausalLMBackbone(model, tiny_tokenizer(), name="tiny-mamba")
    assert "\n" not in str(err.value) and "use a model with attention layers" in str(err.value)


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=lambda arch: arch.name)
def backbone(request):
    return tiny_arch_backbone(request.param)


def _classifier(backbone, placement="prefix", tokens=4, seed=1, max_length=96):
    torch.manual_seed(seed)
    template = build_template("Review: {text} Sentiment: {label}", placement, tokens)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, backbone.hidden_size) * 0.3)
    # multi-token label words (on the tiny vocabulary "positive" / "negative" are several tokens each)
    return PromptedModel(backbone, prompt, template, Verbalizer.from_spec(["negative", "positive"]),
                         max_length=max_length)


def _reference_scores(model: PromptedModel, row: dict) -> torch.Tensor:
    """Class scores of one row by a plain transformers forward: the row's token embeddings with the prompt's vectors
    written in at its soft positions, then each label word's tokens, no padding, no cache, no softprompt scoring."""
    hf = model.backbone.model
    encoded = model.encoder.encode(row, reserve=model.max_word_tokens - 1)
    ids = torch.tensor(encoded.input_ids)
    soft = torch.tensor(encoded.soft_index)
    scores = []
    for word in model.word_ids:
        with torch.no_grad():
            embeds = hf.get_input_embeddings()(torch.cat([ids, torch.tensor(word[:-1], dtype=torch.long)]))
            embeds[: len(ids)][soft >= 0] = model.prompt.embeddings.detach()[soft[soft >= 0]].to(embeds.dtype)
            logits = hf(inputs_embeds=embeds[None]).logits[0].float()                # (T, V)
        log_probs = torch.log_softmax(logits, -1)
        start = len(ids) - 1                                                          # predicts the word's first token
        scores.append(sum(log_probs[start + i, token] for i, token in enumerate(word)))
    return torch.stack(scores)[None]                                                  # (1, W): one word per class


@pytest.mark.parametrize("use_prompt_cache", [True, False], ids=["cached-prompt", "whole-rows"])
def test_scores_equal_a_plain_forward_whatever_shares_the_batch(backbone, use_prompt_cache):
    model = _classifier(backbone)
    model.use_prompt_cache = use_prompt_cache
    with torch.no_grad():
        alone = model.class_scores(model.make_batch([SHORT], label_field=None))
        mixed = model.class_scores(model.make_batch([SHORT, LONG, LONG], label_field=None))
    torch.testing.assert_close(alone, _reference_scores(model, SHORT), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[:1], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[1:2], _reference_scores(model, LONG), atol=1e-4, rtol=1e-4)


def test_a_mixed_server_batch_scores_as_predict_does(backbone):
    prefix, suffix = _classifier(backbone, "prefix", 4, seed=1), _classifier(backbone, "suffix", 3, seed=2)
    requests = [Request(prefix, SHORT), Request(suffix, LONG), Request(prefix, LONG), Request(suffix, SHORT)]
    results = run_batch(backbone, requests)
    for request, result in zip(requests, results):
        with torch.no_grad():
            alone = request.model.class_scores(request.model.make_batch([request.inputs], label_field=None))[0]
        torch.testing.assert_close(torch.tensor(list(result.scores.values())), alone.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["prompt", "deep", "dept"])
def test_train_save_load_evaluate_and_predict(backbone, method, tmp_path, sentiment_dir):
    """train -> prompt file -> load -> evaluate -> predict, for each prompt method; predict's scores are the trained
    model's. A method that cannot hold on the architecture is refused in one line before any training."""
    from softprompt import ConfigError, TrainConfig, evaluate, load_prompted_model, load_task, train

    config = TrainConfig(model="unused", data=str(sentiment_dir), output=str(tmp_path / "run"), max_steps=2,
                         eval_every=2, batch_size=4, lr=0.1, precision="fp32", device="cpu", method=method,
                         num_virtual_tokens=4, compile="off")
    if method == "deep" and not (backbone.keeps_keys_values and backbone.attends_by_position):
        reason = "counts attention distances in columns" if backbone.keeps_keys_values else "has layers without keys/values"
        with pytest.raises(ConfigError, match=reason) as err:
            train(config, backbone=backbone, progress=False)
        assert "\n" not in str(err.value) and "use --method prompt" in str(err.value)
        return
    result = train(config, backbone=backbone, progress=False)
    loaded = load_prompted_model(tmp_path / "run" / "prompt.safetensors", backbone)
    rows = load_task(str(sentiment_dir)).test
    figures = evaluate(loaded, rows, batch_size=3)
    assert figures["n"] == len(rows) and figures["accuracy"] in {i / len(rows) for i in range(len(rows) + 1)}
    batch = {k: v for k, v in loaded.make_batch(rows, label_field=None).items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded.class_scores(batch), result.model.class_scores(batch), atol=1e-4,
                                   rtol=1e-4)
        assert loaded.classify([r["text"] for r in rows]) == [
            loaded.labels[i] for i in loaded.class_scores(batch).argmax(-1).tolist()]


def test_batched_generation_equals_recomputing_each_row_alone(backbone):
    """Greedy generation of a short and a long row together (the key/value cache, or on state-space and recurrent
    layers the context run again each step), and of a row that joins a running decoder, picks the tokens of the
    reference that recomputes one row at a time."""
    from softprompt import generate

    torch.manual_seed(3)
    writer = PromptedModel(backbone, SoftPrompt(torch.randn(4, backbone.hidden_size) * 0.5),
                           build_template("Q: {text}\nA: {target}", "prefix", 4), None, max_length=96)
    rows = [SHORT, LONG]
    alone = generate(writer, rows, max_new_tokens=6, use_cache=False)
    assert generate(writer, rows, max_new_tokens=6) == alone
    requests = [Request(writer, row, "generate", max_new_tokens=6) for row in rows]
    _, decoder = start_batch(backbone, requests[1:])
    decoder.step()
    start_batch(backbone, requests[:1], decoder)  # joins a decoder whose rows are wider
    texts = {}
    while decoder.active:
        texts.update({id(state.request): state.text for state in decoder.step()})
    assert [texts[id(request)] for request in requests] == alone


def test_a_server_classifies_and_streams_as_predict_and_generate_do(backbone, tmp_path):
    """Two prompts on one served backbone: /v1/classify's scores are predict's (short and long inputs), and a
    streamed greedy completion is `generate`'s text."""
    import json

    from fastapi.testclient import TestClient

    from softprompt import generate, save_prompt
    from softprompt.inference.bank import PromptBank
    from softprompt.serve import ServeSettings, create_app

    folder = tmp_path / "prompts"
    folder.mkdir()
    save_prompt(folder / "sentiment.safetensors", _classifier(backbone, "prefix", 4, seed=1))
    torch.manual_seed(3)
    writer = PromptedModel(backbone, SoftPrompt(torch.randn(4, backbone.hidden_size) * 0.5),
                           build_template("Q: {text}\nA: {target}", "prefix", 4), None, max_length=96)
    save_prompt(folder / "qa.safetensors", writer)
    settings = ServeSettings(admin_token="t", max_input_tokens=96, max_new_tokens=12, reload_interval=0,
                             batch_wait_ms=5)
    with TestClient(create_app(PromptBank(backbone), folder, settings)) as client:
        bank = client.app.state.bank
        sentiment = bank.get("sentiment")
        response = client.post("/v1/classify", json={"prompt": "sentiment", "inputs": [SHORT["text"], LONG["text"]]})
        assert response.status_code == 200, response.text
        for row, result in zip([SHORT, LONG], response.json()["results"]):
            with torch.no_grad():
                alone = sentiment.class_scores(sentiment.make_batch([row], label_field=None))[0]
            assert list(result["scores"].values()) == pytest.approx(alone.tolist(), abs=1e-4)
        expected = generate(bank.get("qa"), [{"text": "the quick brown fox"}], max_new_tokens=8)[0]
        body = {"model": "qa", "prompt": "the quick brown fox", "max_tokens": 8, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as stream:
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda arch: arch.name)
def test_bf16_scores_are_within_bf16s_own_error(arch):
    """bf16 weights: softprompt's scores differ from the fp32 plain forward by no more than a plain bf16 forward of the
    same inputs does (its own rounding), with a margin of 3x and 0.05 nats for summation order."""
    fp32 = _classifier(tiny_arch_backbone(arch))
    bf16_backbone = tiny_arch_backbone(arch)
    bf16_backbone.model.to(torch.bfloat16)
    bf16 = PromptedModel(bf16_backbone, fp32.prompt, fp32.template, fp32.verbalizer, max_length=96)
    for row in (SHORT, LONG):
        exact = _reference_scores(fp32, row)
        own_error = (_reference_scores(bf16, row) - exact).abs().max()
        with torch.no_grad():
            ours = bf16.class_scores(bf16.make_batch([row, SHORT, LONG], label_field=None))[:1].float()
        assert (ours - exact).abs().max() <= 3 * own_error + 0.05, (row, ours, exact, own_error)


def test_the_docs_table_lists_the_matrix():
    """docs/guides/modalities.md lists every architecture of the matrix with what it can do, and no other."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "guides" / "modalities.md").read_text()
    table = text.split("<!-- architectures -->")[1].split("<!-- /architectures -->")[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_]+)` \|.*$", table, re.MULTILINE)}
    assert set(rows) == {arch.name for arch in ARCHITECTURES}
    for arch in ARCHITECTURES:
        cells = [c.strip() for c in rows[arch.name].strip("|").split("|")]
        assert cells[1] == arch.features, arch.name
        assert cells[2] == "yes", arch.name
        backbone = tiny_arch_backbone(arch)
        assert cells[3].startswith("yes" if backbone.keeps_keys_values and backbone.attends_by_position else "no:"), \
            arch.name


def test_the_matrix_passes_on_the_oldest_transformers_the_project_declares():
    """The lower bound of pyproject.toml's transformers range is tested, not hoped for: this file's tests run again
    in a child process with that release first on the path (`make test` installs it into .transformers-oldest)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import system
    from packaging.version import Version

    root = Path(__file__).parents[2]
    declared = re.search(r'"transformers>=([0-9.]+)', (root / "pyproject.toml").read_text()).group(1)
    oldest = re.search(r"^TRANSFORMERS_OLDEST := (\S+)", (root / "Makefile").read_text(), re.MULTILINE).group(1)
    assert Version(declared) == Version(oldest)
    folder = root / ".transformers-oldest"
    if not (folder / "transformers").is_dir():
        system.unavailable(f"needs transformers {oldest} in {folder.name}/ (make test installs it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert version.stdout.strip() == oldest, version.stderr
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                            "not oldest_transformers"], capture_output=True, text=True, env=env, cwd=root,
                           timeout=1200)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else child.stderr[-2000:]
    assert child.returncode == 0 and " passed" in summary and "failed" not in summary, child.stdout[-4000:]
