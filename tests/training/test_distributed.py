"""Data-parallel training over processes (accelerate's torchrun launcher, gloo on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from softprompt import TrainConfig, train

ROOT = Path(__file__).parents[2]


def _launch(config_file: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config_file),
                "--num_processes", "2", "--dynamo_backend", "no", "--main_process_port", "0",
                "-m", "softprompt", "train"]
    proc = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, sentiment_dir):
    common = ["--model", tiny_model_dir, "--data", str(sentiment_dir), "--max-steps", "8", "--eval-every", "4",
              "--eval-limit", "0", "--precision", "fp32", "--lr", "0.05", "--quiet"]
    # 3 rows per process per step: 6 per global step; 32 rows make a short last global batch (2 rows) too.
    proc = _launch("examples/accelerate/data_parallel.yaml", common + ["--batch-size", "3", "--output",
                                                                        str(tmp_path / "two")])
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only the main process reports
    single = train(TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), max_steps=8, eval_every=4, eval_limit=0,
                               precision="fp32", lr=0.05, batch_size=6, output=str(tmp_path / "one"), device="cpu"),
                   progress=False)
    two = load_file(tmp_path / "two" / "prompt.safetensors")
    one = load_file(single.prompt_path)
    torch.testing.assert_close(two["prompt_embeddings"], one["prompt_embeddings"], atol=1e-5, rtol=1e-4)
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    single_train = [r for r in single.history if r["split"] == "train"]
    assert train_records[-1]["examples"] == single_train[-1]["examples"] == 44  # 8 global batches, one short
    assert len([r for r in records if r["split"] == "validation"]) == 2  # one writer, no duplicate lines
    assert abs(train_records[-1]["loss"] - single_train[-1]["loss"]) < 1e-4


def test_a_backbone_sharded_over_two_processes_trains_the_same_prompt(tmp_path, sentiment_dir):
    import tiny

    model_dir = tiny.save_tiny(tmp_path / "untied", "llama-untied")  # its input embedding gets sharded too
    common = ["--model", model_dir, "--data", str(sentiment_dir), "--max-steps", "6", "--eval-every", "3",
              "--eval-limit", "0", "--precision", "fp32", "--lr", "0.05", "--init", "labels", "--quiet"]
    proc = _launch("examples/accelerate/fsdp.yaml", common + ["--batch-size", "3", "--output", str(tmp_path / "fsdp")])
    assert "backbone sharded over 2 processes: 2 decoder layers and the input embedding" in proc.stdout
    single = train(TrainConfig(model=model_dir, data=str(sentiment_dir), max_steps=6, eval_every=3, eval_limit=0,
                               precision="fp32", lr=0.05, init="labels", batch_size=6, output=str(tmp_path / "one"),
                               device="cpu"), progress=False)
    sharded = load_file(tmp_path / "fsdp" / "prompt.safetensors")
    torch.testing.assert_close(sharded["prompt_embeddings"], load_file(single.prompt_path)["prompt_embeddings"],
                               atol=1e-5, rtol=1e-4)
    from softprompt.formats import read_prompt_tensors  # the fingerprint is of the whole weights

    assert read_prompt_tensors(tmp_path / "fsdp" / "prompt.safetensors")[1]["backbone"]["fingerprint"] == \
        read_prompt_tensors(single.prompt_path)[1]["backbone"]["fingerprint"]


def _deepspeed_missing() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or DeepSpeed failing to set itself up
        return f"deepspeed is not importable ({type(err).__name__}: {err}); pip install deepspeed to run this test"
    return None


def test_a_backbone_partitioned_by_deepspeed_zero3_trains_the_same_prompt(tmp_path, sentiment_dir):
    import pytest
    import tiny

    if (reason := _deepspeed_missing()) is not None:
        pytest.skip(reason)
    model_dir = tiny.save_tiny(tmp_path / "untied", "llama-untied")  # its input embedding gets partitioned too
    # The tiny model's weights are all under DeepSpeed's default persistence threshold (1e5): 0 partitions them all.
    # A DeepSpeed JSON replaces the example's `deepspeed_config` fields (accelerate refuses both at once).
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    launch_config = yaml.safe_load((ROOT / "examples/accelerate/deepspeed_zero3.yaml").read_text())
    launch_config["deepspeed_config"] = {"deepspeed_config_file": str(ds_config), "zero3_init_flag": False}
    del launch_config["mixed_precision"]
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(launch_config))
    common = ["--model", model_dir, "--data", str(sentiment_dir), "--max-steps", "6", "--eval-every", "3",
              "--eval-limit", "0", "--precision", "fp32", "--lr", "0.05", "--init", "labels", "--quiet"]
    proc = _launch(str(tmp_path / "zero3.yaml"), common + ["--batch-size", "3", "--output", str(tmp_path / "zero3")])
    # 2 layers of 9,280 weights and a 400 x 32 embedding, each weight split in two
    assert ("backbone partitioned (DeepSpeed ZeRO-3) over 2 processes: 2 decoder layers and the input embedding "
            "(this process holds 15,680 of their 31,360 weights)") in proc.stdout
    single = train(TrainConfig(model=model_dir, data=str(sentiment_dir), max_steps=6, eval_every=3, eval_limit=0,
                               precision="fp32", lr=0.05, init="labels", batch_size=6, output=str(tmp_path / "one"),
                               device="cpu"), progress=False)
    partitioned = load_file(tmp_path / "zero3" / "prompt.safetensors")
    torch.testing.assert_close(partitioned["prompt_embeddings"], load_file(single.prompt_path)["prompt_embeddings"],
                               atol=1e-5, rtol=1e-4)
    from softprompt.formats import read_prompt_tensors  # the fingerprint is of the whole weights

    assert read_prompt_tensors(tmp_path / "zero3" / "prompt.safetensors")[1]["backbone"]["fingerprint"] == \
        read_prompt_tensors(single.prompt_path)[1]["backbone"]["fingerprint"]
