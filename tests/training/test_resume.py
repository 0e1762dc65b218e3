"""Exact resume: a run killed (kill -9) mid-training or mid-checkpoint-write continues to the same prompt."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from resume_worker_client import start_worker
from safetensors.torch import load_file

from softprompt import TrainConfig, read_prompt_tensors
from softprompt.cli import main
from softprompt.training import resume, train
from softprompt.training.checkpoint import CHECKPOINT_NAME, BatchStream, load_checkpoint


def _config(tmp_path, model_dir, data_dir, name, **kw):
    base = dict(model=model_dir, data=str(data_dir), output=str(tmp_path / name), max_steps=20, eval_every=4,
                eval_limit=0, batch_size=4, lr=3e-2, precision="fp32", device="cpu", checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def _records(run_dir):
    """metrics.jsonl without its timing fields."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("train_seconds", None), record.pop("seconds", None)
        out.append(record)
    return out


def _same_prompt(a, b):
    ta, tb = load_file(Path(a) / "prompt.safetensors"), load_file(Path(b) / "prompt.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _start(mode, config):
    return start_worker(mode, config)


def test_batch_stream_continues_from_its_state():
    lengths = [(i * 7) % 23 for i in range(50)]
    for bucket in (False, True):
        stream = BatchStream(lengths, 8, seed=1, bucket=bucket)
        for _ in range(9):  # into the second pass (7 batches per pass)
            next(stream)
        state = stream.state_dict()
        expected = [next(stream) for _ in range(12)]
        again = BatchStream(lengths, 8, seed=1, bucket=bucket)
        again.load_state_dict(state)
        assert [next(again) for _ in range(12)] == expected


def test_kill_9_mid_training_then_resume_gives_the_same_prompt(tmp_path, tiny_model_dir, sentiment_dir):
    reference = train(_config(tmp_path, tiny_model_dir, sentiment_dir, "reference"), progress=False)
    config = _config(tmp_path, tiny_model_dir, sentiment_dir, "killed")
    proc = _start("slow", config)
    checkpoint = Path(config.output) / CHECKPOINT_NAME
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and load_checkpoint(config.output)["step"] >= 9:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(config.output)
    assert 9 <= state["step"] < 20
    assert not (Path(config.output) / "training.png").exists()  # it really stopped before the end
    result = resume(config.output, progress=False)
    assert result.steps == 20 and result.best_step == reference.best_step
    _same_prompt(config.output, reference.output)
    assert _records(config.output) == _records(reference.output)  # the log too: no lost or doubled records


def test_kill_9_mid_checkpoint_write_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, sentiment_dir):
    reference = train(_config(tmp_path, tiny_model_dir, sentiment_dir, "reference"), progress=False)
    config = _config(tmp_path, tiny_model_dir, sentiment_dir, "killed")
    proc = _start("hang-in-write", config)
    line = proc.stdout.readline()
    assert line.strip() == "IN_WRITE", proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = Path(config.output)
    assert list(run.glob(f".{CHECKPOINT_NAME}.*.tmp"))  # the half-written temp file is there ...
    assert load_checkpoint(run)["step"] == 3  # ... and the first checkpoint is intact
    result = resume(run, progress=False)
    assert not list(run.glob(f".{CHECKPOINT_NAME}.*.tmp"))  # resuming cleared the leftover
    assert result.steps == 20
    _same_prompt(run, reference.output)
    assert _records(run) == _records(reference.output)


def test_kill_9_mid_prompt_write_keeps_the_last_best_prompt(tmp_path, tiny_model_dir, sentiment_dir):
    reference = train(_config(tmp_path, tiny_model_dir, sentiment_dir, "reference"), progress=False)
    config = _config(tmp_path, tiny_model_dir, sentiment_dir, "killed", eval_every=2, checkpoint_every=2)
    proc = _start("hang-in-prompt-write", config)
    line = proc.stdout.readline()
    assert line.strip() == "IN_PROMPT_WRITE", proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = Path(config.output)
    assert list(run.glob(".prompt.safetensors.*.tmp"))  # the half-written temp file is there ...
    read_prompt_tensors(run / "prompt.safetensors")  # ... and the prompt from the first validation is whole
    result = resume(run, progress=False)
    assert result.steps == 20 and not list(run.glob(".*.tmp"))
    reference_again = train(_config(tmp_path, tiny_model_dir, sentiment_dir, "reference2", eval_every=2,
                                    checkpoint_every=2), progress=False)
    _same_prompt(run, reference_again.output)
    assert _records(run) == _records(reference_again.output)
    del reference


def test_kill_9_at_random_points_then_resume_gives_the_same_run(tmp_path, tiny_model_dir, sentiment_dir):
    """Killed three times at random moments (seeded), resumed by a new process each time: after every kill each
    file in the run folder is whole (or absent), and the run ends with the uninterrupted run's prompt and log."""
    import random

    reference = train(_config(tmp_path, tiny_model_dir, sentiment_dir, "reference"), progress=False)
    config = _config(tmp_path, tiny_model_dir, sentiment_dir, "killed")
    run = Path(config.output)
    rng = random.Random(17)
    mode, steps, kills = "slow", [0], 0
    for _ in range(3):
        proc = _start(mode, config)
        started = time.time()

        def stamp():
            return (run / CHECKPOINT_NAME).stat().st_mtime_ns if (run / CHECKPOINT_NAME).exists() else None

        before = stamp()
        while stamp() == before and proc.poll() is None and time.time() - started < 120:
            time.sleep(0.01)  # this process has written a checkpoint: it is training, past its start-up
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        state = load_checkpoint(run)  # whole, whatever the kill interrupted
        assert steps[-1] < state["step"] <= 20
        steps.append(state["step"])
        if (run / "prompt.safetensors").exists():
            read_prompt_tensors(run / "prompt.safetensors")
        if (run / "metrics.jsonl").exists():
            [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        mode = "resume-slow"
    assert kills >= 2, steps  # (the third process may finish first)
    if not (run / "training.png").exists():
        result = resume(run, progress=False)
        assert result.steps == 20
    _same_prompt(run, reference.output)
    assert _records(run) == _records(reference.output)


def test_resume_cli_and_its_errors(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    config = _config(tmp_path, tiny_model_dir, sentiment_dir, "run", max_steps=8, eval_every=0)
    train(config, progress=False)
    assert load_checkpoint(config.output)["step"] == 6
    assert main(["train", "--resume", config.output, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 8
    assert main(["train", "--resume", config.output, "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    (Path(config.output) / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", config.output]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(Exception, match="checkpoint-every"):
        TrainConfig(data="x", checkpoint_every=-1)
