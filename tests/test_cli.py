"""The CLI as a user runs it: subprocesses, JSON on stdout, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import tiny


def run(*args, cwd=None):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "softprompt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cli")
    from conftest import make_sentiment_dir
    data = make_sentiment_dir(root / "data", train_repeats=3)
    (root / "run.yaml").write_text("batch-size: 4\neval-every: 2\nprecision: fp32\n")
    out = root / "run"
    proc = run("train", "--model", tiny_model_dir, "--data", data, "--output", out, "--num-virtual-tokens", 6,
               "--init", "labels", "--label-words", "positive=great,good", "--label-words", "negative=bad",
               "--max-steps", 4, "--config", root / "run.yaml", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return root, data, out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_writes_the_run(trained):
    root, _, out, summary = trained
    assert summary["steps"] == 4 and "accuracy" in summary["validation"]
    assert {"prompt.safetensors", "metrics.jsonl", "training.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    config = (out / "config.yaml").read_text()
    assert "batch_size: 4" in config and "eval_every: 2" in config  # from --config
    assert "num_virtual_tokens: 6" in config


def test_eval_prints_one_json_object(trained, tiny_model_dir):
    _, data, out, _ = trained
    proc = run("eval", "--prompt", out / "prompt.safetensors", "--data", data, "--split", "test", "--limit", 5,
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 5 and 0.0 <= result["accuracy"] <= 1.0 and result["split"] == "test"


def test_predict_and_info(trained):
    _, _, out, _ = trained
    proc = run("predict", "--prompt", out / "prompt.safetensors", "a great film", "boring")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines()] and set(proc.stdout.split()) <= {"positive", "negative"}
    assert len(proc.stdout.split()) == 2
    proc = run("info", out / "prompt.safetensors")
    assert proc.returncode == 0 and "fingerprint" in proc.stdout and "6 virtual tokens" in proc.stdout
    assert "positive=great/good" in proc.stdout


def test_user_mistakes_are_one_line_and_exit_2(trained, tmp_path):
    root, data, out, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "ok", "label": "a"}\n{"text": "ok", "label": "b"}\n{"text": ""}\n')
    proc = run("train", "--model", "unused", "--data", bad, "--output", tmp_path / "x", "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{bad / 'train.jsonl'}:3: field 'text': empty" in proc.stderr
    assert not (tmp_path / "x").exists()

    other = tiny.save_tiny(tmp_path / "other", "llama", seed=5)
    proc = run("eval", "--prompt", out / "prompt.safetensors", "--data", data, "--model", other)
    assert proc.returncode == 2 and "fingerprint" in proc.stderr and proc.stderr.count("\n") == 1

    proc = run("train", "--data", data, "--lr", "-1")
    assert proc.returncode == 2 and "--lr must be > 0" in proc.stderr

    proc = run("info", tmp_path / "missing.safetensors")
    assert proc.returncode == 2 and "not found" in proc.stderr
