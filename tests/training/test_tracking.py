"""Experiment tracking (TensorBoard through accelerate, offline), the model card, the automatic log interval, and
save_pretrained / from_pretrained."""

import json

import pytest

import softprompt as sp
from softprompt.training import train


def _config(tmp_path, model_dir, data_dir, **kw):
    base = dict(model=model_dir, data=str(data_dir), output=str(tmp_path / "run"), max_steps=6, eval_every=3,
                batch_size=4, precision="fp32", device="cpu")
    return sp.TrainConfig(**{**base, **kw})


def test_tensorboard_gets_the_runs_records_and_a_card_is_written(tmp_path, tiny_model_dir, sentiment_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(_config(tmp_path, tiny_model_dir, sentiment_dir, report_to="tensorboard"), progress=False)
    events = [p for p in (result.output / "tensorboard").rglob("events.out.tfevents.*") if p.parent.name == "run"]
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    loss = accumulator.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 7))  # a 6-step run logs every step (auto interval)
    records = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records if r["split"] == "train"])
    validation = accumulator.Scalars("validation/accuracy")
    assert [e.step for e in validation] == [3, 6]

    card = (result.output / "README.md").read_text()
    best = result.best_validation["accuracy"]
    assert f"accuracy {best:.4f}" in card and f"at step {result.best_step}" in card
    assert "negative, positive" in card and "[soft:20]" in card and "lr 0.03" in card


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(tmp_path, capsys):
    from softprompt.cli import main

    assert main(["train", "--data", "/no/such/data", "--report-to", "mlflow", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("softprompt: error: --report-to mlflow: the 'mlflow' package is not installed; pip install mlflow "
                   "(or --report-to none)")


def test_the_log_interval_follows_the_run_length(tmp_path, tiny_model_dir, sentiment_dir):
    steps = lambda run: [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa
                         if r["split"] == "train"]
    result = train(_config(tmp_path, tiny_model_dir, sentiment_dir, max_steps=30, eval_every=0), progress=False)
    assert steps(result.output) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    result = train(_config(tmp_path, tiny_model_dir, sentiment_dir, max_steps=8, eval_every=0, log_every=5,
                           output=str(tmp_path / "r2")), progress=False)
    assert steps(result.output) == [5, 8]


def test_save_pretrained_and_from_pretrained(tmp_path, tiny_model_dir, sentiment_dir):
    result = train(_config(tmp_path, tiny_model_dir, sentiment_dir, max_steps=2, eval_every=0), progress=False)
    model = sp.from_pretrained(result.output, precision="fp32")  # the backbone named in the file
    assert isinstance(model, sp.PromptedModel) and model.labels == ("negative", "positive")
    again = sp.PromptedModel.from_pretrained(result.output / "prompt.safetensors", model.backbone)
    assert again.prompt.embeddings.equal(model.prompt.embeddings)
    saved = again.save_pretrained(tmp_path / "copy")
    assert saved == tmp_path / "copy" / "prompt.safetensors"
    assert sp.read_prompt_tensors(saved)[0]["prompt_embeddings"].equal(model.prompt.embeddings.detach())
    with pytest.raises(sp.PromptFileError, match="no prompt.safetensors"):
        sp.from_pretrained(tmp_path)
