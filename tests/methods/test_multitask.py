"""Multitask prompt tuning (shared prompt + rank-r task factors), stage 2 adaptation, few-shot subsets."""

import json

import pytest
import torch
from rows import write_jsonl

from softprompt import TrainConfig, load_task, train
from softprompt.cli import main
from softprompt.errors import SoftPromptError
from softprompt.formats import read_prompt_tensors
from softprompt.kinds.table import load_prompted_model
from softprompt.training.loop import per_class, train_multitask
from softprompt.training.multitask import parse_tasks

TOPICS = [("the match ended in a draw", "sport"), ("a fine soup with bread", "food"),
          ("the striker scored twice", "sport"), ("fresh pasta and sauce", "food")]


@pytest.fixture
def topic_dir(tmp_path):
    folder = tmp_path / "topics"
    folder.mkdir()
    rows = [{"text": t, "label": l} for t, l in TOPICS]
    for split, repeat in (("train", 6), ("validation", 1), ("test", 1)):
        write_jsonl(folder / f"{split}.jsonl", rows * repeat)
    return folder


def _config(tmp_path, model_dir, **kw):
    base = dict(model=model_dir, max_steps=6, eval_every=3, eval_limit=0, batch_size=8, lr=5e-2, precision="fp32",
                device="cpu", num_virtual_tokens=4, output=str(tmp_path / "mpt"))
    base.update(kw)
    return TrainConfig(**base)


def test_stage_one_writes_a_shared_prompt_and_task_prompts(tmp_path, tiny_model_dir, sentiment_dir, topic_dir):
    from softprompt import load_backbone

    config = _config(tmp_path, tiny_model_dir, method="multitask", tasks=f"senti={sentiment_dir},topic={topic_dir}",
                     mpt_rank=2)
    result = train_multitask(config, progress=False)
    tensors, meta = read_prompt_tensors(result.shared_path)
    assert meta["method"] == "multitask" and meta["rank"] == 2 and set(meta["tasks"]) == {"senti", "topic"}
    assert tensors["shared_prompt"].shape == (4, 32) and tensors["task_u.topic"].shape == (4, 2)
    assert result.trainable_params == 4 * 32 + 2 * (4 * 2 + 32 * 2)
    backbone = load_backbone(tiny_model_dir, dtype="fp32")
    topic = load_prompted_model(result.task_paths["topic"], backbone)  # an ordinary prompt file per source task
    expected = tensors["shared_prompt"] * (tensors["task_u.topic"] @ tensors["task_v.topic"].T)
    torch.testing.assert_close(topic.prompt.embeddings.detach(), expected)
    assert topic.labels == ("food", "sport")
    assert not torch.allclose(tensors["task_u.senti"], tensors["task_u.topic"])  # each task has its own factor
    with pytest.raises(SoftPromptError, match="holds no single task's prompt"):
        load_prompted_model(result.shared_path, backbone)


def test_stage_two_trains_only_the_new_factor(tmp_path, tiny_model_dir, sentiment_dir, topic_dir):
    stage1 = _config(tmp_path, tiny_model_dir, method="multitask", tasks=f"senti={sentiment_dir},topic={topic_dir}")
    shared = train_multitask(stage1, progress=False).shared_path
    base = dict(model=tiny_model_dir, data=str(topic_dir), max_steps=4, eval_every=0, batch_size=4, lr=5e-2,
                precision="fp32", device="cpu", init_from=str(shared))
    result = train(TrainConfig(**base, output=str(tmp_path / "target")), progress=False)
    _, meta = read_prompt_tensors(result.prompt_path)
    assert meta["method"] == "prompt" and meta["training"]["trainable_params"] == 4 * 1 + 32 * 1
    torch.testing.assert_close(result.model.prompt.shared.detach(), read_prompt_tensors(shared)[0]["shared_prompt"])
    both = train(TrainConfig(**base, mpt_train_shared=True, output=str(tmp_path / "both")), progress=False)
    assert read_prompt_tensors(both.prompt_path)[1]["training"]["trainable_params"] == 4 * 32 + 4 + 32


def test_multitask_cli_and_bad_task_lists(tmp_path, tiny_model_dir, sentiment_dir, topic_dir, capsys):
    assert main(["train", "--method", "multitask", "--tasks", f"a={sentiment_dir},b={topic_dir}", "--model",
                 tiny_model_dir, "--max-steps", "2", "--eval-every", "0", "--eval-limit", "0", "--batch-size", "4",
                 "--num-virtual-tokens", "3", "--precision", "fp32", "--output", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["tasks"]) == {"a", "b"} and summary["shared"].endswith("shared.safetensors")
    for text, message in (("rt", "not name=data"), ("a=x", "two or more"), ("a=x,a=y", "twice"),
                          ("1a=x,b=y", "starting with a letter")):
        with pytest.raises(SoftPromptError, match=message):
            parse_tasks(text)
    assert main(["train", "--method", "multitask", "--model", tiny_model_dir]) == 2
    assert "needs --tasks" in capsys.readouterr().err


def test_few_shot_subsets_are_seeded_and_per_class(sentiment_dir):
    rows = load_task(str(sentiment_dir)).train
    subset = per_class(rows, "label", 3, seed=1)
    assert sorted(r["label"] for r in subset) == ["negative"] * 3 + ["positive"] * 3
    assert subset == per_class(rows, "label", 3, seed=1) and subset != per_class(rows, "label", 3, seed=2)


def test_distillation_term_is_temperature_scaled_kl():
    from softprompt.training.multitask import distillation_loss

    student, teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    t = 2.0
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    expected = t * t * (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)


def test_stage_one_distils_each_task_from_its_teacher(tmp_path, tiny_model_dir, sentiment_dir, topic_dir, capsys):
    """A teacher equal to the student's starting prompt gives a zero term at step 1 (same rows, same scores);
    a trained teacher gives a positive one and changes where the shared prompt ends up."""
    from softprompt import load_backbone
    from softprompt.formats import save_prompt
    from softprompt.kinds.table import build_prompted_model
    from softprompt.prompts import PromptInit, SoftPrompt, initial_embeddings

    tasks = f"senti={sentiment_dir},topic={topic_dir}"
    stage1 = _config(tmp_path, tiny_model_dir, method="multitask", tasks=tasks, max_steps=3, eval_every=0, log_every=1)
    backbone = load_backbone(tiny_model_dir, dtype="fp32")
    start = initial_embeddings(PromptInit.VOCAB, 4, backbone.input_embedding_matrix(), backbone.tokenizer,
                               generator=torch.Generator().manual_seed(stage1.seed))
    twin = build_prompted_model(stage1.replace(data=str(topic_dir), method="prompt", tasks=None, init="vocab"),
                                backbone, load_task(str(topic_dir)))
    twin.prompt = SoftPrompt(start)
    twin_path = save_prompt(tmp_path / "twin.safetensors", twin, init="vocab")
    trained = train(TrainConfig(model=tiny_model_dir, data=str(topic_dir), max_steps=8, eval_every=0, batch_size=8,
                                lr=0.3, precision="fp32", device="cpu", num_virtual_tokens=4,
                                output=str(tmp_path / "teacher")), backbone=backbone, progress=False).prompt_path

    def kd_log(teacher, out):
        result = train_multitask(stage1.replace(mpt_teachers=f"topic={teacher}", output=str(tmp_path / out)),
                                 progress=False)
        rows = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return result, [r["kd.topic"] for r in rows if r["split"] == "train"], rows

    _, twin_kd, rows = kd_log(twin_path, "twin")
    assert twin_kd[0] == pytest.approx(0.0, abs=1e-6) and twin_kd[-1] > 1e-6
    assert all("kd.senti" not in r for r in rows)  # a task without a teacher trains on its labels only
    result, trained_kd, _ = kd_log(trained, "taught")
    assert trained_kd[0] > 1e-3
    meta = read_prompt_tensors(result.shared_path)[1]
    assert meta["training"]["distill"] == {"teachers": {"topic": str(trained)}, "weight": 1.0, "temperature": 2.0}
    plain = train_multitask(stage1.replace(output=str(tmp_path / "plain")), progress=False)
    assert not torch.equal(read_prompt_tensors(plain.shared_path)[0]["shared_prompt"],
                           read_prompt_tensors(result.shared_path)[0]["shared_prompt"])

    for teachers, message in ((f"other={trained}", "not one of --tasks"), ("topic=/no/such.safetensors", "no such file"),
                              (f"senti={trained}", "are not task 'senti'"), (f"topic{trained}", "not name=")):
        with pytest.raises(SoftPromptError, match=message):
            train_multitask(stage1.replace(mpt_teachers=teachers, output=str(tmp_path / "bad")), progress=False)
    assert main(["train", "--mpt-teachers", f"topic={trained}", "--data", str(topic_dir), "--model",
                 tiny_model_dir]) == 2
    assert "--mpt-teachers applies to --method multitask" in capsys.readouterr().err


def test_stage_one_resumes_after_kill_9_to_the_same_prompts(tmp_path, tiny_model_dir, sentiment_dir, topic_dir):
    """Stage 1 runs through the training loop: a run killed mid-training resumes to the very same shared prompt,
    task prompts and log as an uninterrupted run (and the divergence guard, accumulation and data parallelism
    are the loop's too)."""
    import os
    import signal
    import time

    from resume_worker_client import start_worker

    from softprompt.training import resume
    from softprompt.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

    tasks = f"senti={sentiment_dir},topic={topic_dir}"
    common = dict(method="multitask", tasks=tasks, max_steps=16, eval_every=4, checkpoint_every=3, log_every=1,
                  grad_accum=2)
    reference = train_multitask(_config(tmp_path, tiny_model_dir, output=str(tmp_path / "reference"), **common),
                                progress=False)
    config = _config(tmp_path, tiny_model_dir, output=str(tmp_path / "killed"), **common)
    proc = start_worker("slow", config)
    checkpoint = tmp_path / "killed" / CHECKPOINT_NAME
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and load_checkpoint(config.output)["step"] >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 6 <= load_checkpoint(config.output)["step"] < 16
    result = resume(config.output, progress=False)
    assert result.steps == 16 and result.best_step == reference.best_step
    for name in ("shared", "senti", "topic"):
        a, b = (read_prompt_tensors(folder / f"{name}.safetensors")[0] for folder in (tmp_path / "killed",
                                                                                      tmp_path / "reference"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def records(folder):  # without timings
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k not in ("train_seconds", "seconds")}
            return value

        return [strip(json.loads(line)) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "killed") == records(tmp_path / "reference")
