import json

import pytest
import tiny
import torch
from rows import write_jsonl

from softprompt import TrainConfig, build_prompted_model, load_task, read_prompt_file, train
from softprompt.frozen import weights_fingerprint


def test_backbone_stays_frozen_and_only_the_prompt_moves(tmp_path, sentiment_dir):
    backbone = tiny.tiny_backbone("llama")
    before = weights_fingerprint(backbone.model, full=True)
    result = train(tiny.train_config(tmp_path, sentiment_dir, "unused"), backbone=backbone, progress=False)
    assert weights_fingerprint(backbone.model, full=True) == before
    assert not any(p.requires_grad for p in backbone.model.parameters())
    result.model.train()
    assert not backbone.model.training and not any(m.training for m in backbone.model.modules())
    assert [n for n, p in result.model.named_parameters() if p.requires_grad] == ["prompt.embeddings"]
    init = tiny.tiny_backbone("llama").input_embedding_matrix()
    assert not any((init == row).all(dim=1).any() for row in result.model.prompt.embeddings.detach())


def test_run_directory_and_best_prompt(tmp_path, sentiment_dir, tiny_model_dir):
    result = train(tiny.train_config(tmp_path, sentiment_dir, tiny_model_dir), progress=False)
    out = tmp_path / "run"
    assert {"prompt.safetensors", "metrics.jsonl", "training.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in evals] == [4, 8, 12]
    best = max(evals, key=lambda r: r["accuracy"])  # first of equals wins
    assert result.best_step == best["step"]
    embeddings, meta = read_prompt_file(out / "prompt.safetensors")
    assert meta["training"]["best_step"] == best["step"] and not meta["training"].get("in_progress")
    assert torch.equal(embeddings, result.model.prompt.embeddings.detach().cpu())
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_loss_falls_classification_and_generation(tmp_path, tiny_llama):
    data = tmp_path / "cls"
    data.mkdir()
    rows = [{"text": t, "label": "positive" if i % 4 else "negative"}
            for i, t in enumerate(["a great film", "fine cast", "warm fun", "the lazy dog"] * 6)]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "validation.jsonl", rows[:8])
    cfg = tiny.train_config(tmp_path, data, "unused", max_steps=30, eval_every=0, lr=0.3)
    task = load_task(str(data))

    def full_loss(model):
        with torch.no_grad():
            return model.loss(model.make_batch(task.train))[0].item()

    initial = full_loss(build_prompted_model(cfg, tiny_llama, task))
    result = train(cfg, backbone=tiny_llama, task=task, progress=False)
    assert full_loss(result.model) < initial - 0.05

    gen = tmp_path / "gen"
    gen.mkdir()
    write_jsonl(gen / "train.jsonl", [{"text": t, "target": "great fun"} for t in ["a", "the dog", "fox"] * 8])
    cfg = tiny.train_config(tmp_path, gen, "unused", task="generation", init="vocab", max_steps=30, eval_every=10, lr=0.3,
                  output=str(tmp_path / "gen-run"))
    result = train(cfg, backbone=tiny_llama, progress=False)
    losses = [h["loss"] for h in result.history if h["split"] == "train"]
    assert losses[-1] < losses[0] * 0.7
    assert result.best_validation["loss"] < losses[0]


def test_early_stopping_and_bf16(tmp_path, sentiment_dir):
    backbone = tiny.tiny_backbone("llama")
    backbone.model.to(torch.bfloat16)
    cfg = tiny.train_config(tmp_path, sentiment_dir, "unused", max_steps=200, eval_every=2, patience=2, lr=1e-6)
    result = train(cfg, backbone=backbone, progress=False)
    assert result.steps < 200
    assert result.model.prompt.embeddings.dtype == torch.float32
    assert backbone.dtype == torch.bfloat16


def test_config_file_and_cross_field_errors(tmp_path):
    from softprompt import ConfigError

    (tmp_path / "run.yaml").write_text("data: rotten_tomatoes\nlr: 0.5\nnum-virtual-tokens: 8\n")
    cfg = TrainConfig.from_sources(tmp_path / "run.yaml", lr=0.1)
    assert cfg.lr == 0.1 and cfg.num_virtual_tokens == 8 and cfg.data == "rotten_tomatoes"
    (tmp_path / "bad.yaml").write_text("data: x\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        TrainConfig.from_sources(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="--init labels needs --task classification"):
        TrainConfig(data="x", task="generation")
    with pytest.raises(ConfigError, match="--placement 'middle'"):
        TrainConfig(data="x", placement="middle")
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        TrainConfig(data="x", lr=0)


def test_adafactor_two_fields_and_suffix(tmp_path, tiny_llama):
    data = tmp_path / "pairs"
    data.mkdir()
    rows = [{"premise": p, "hypothesis": h, "label": l} for p, h, l in [
        ("a great film", "it is good", "yes"), ("a dull movie", "it is good", "no"),
        ("warm fun", "it is fun", "yes"), ("the lazy dog", "it is fun", "no")] * 4]
    write_jsonl(data / "train.jsonl", rows)
    cfg = tiny.train_config(tmp_path, data, "unused", text_field="premise,hypothesis", optimizer="adafactor",
                  template="Premise: {premise} Hypothesis: {hypothesis} Entailed: {label}", placement="suffix",
                  num_virtual_tokens=3, max_steps=4)
    result = train(cfg, backbone=tiny_llama, progress=False)
    assert result.model.template.source == ("Premise: {premise} Hypothesis: {hypothesis}[soft:3] "
                                            "Entailed: {label}")
    _, meta = read_prompt_file(result.prompt_path)
    assert meta["placement"] == "suffix" and meta["labels"] == ["no", "yes"]
    with pytest.raises(Exception, match="--text-field"):
        train(cfg.replace(text_field="premise"), backbone=tiny_llama, progress=False)


def test_length_bucketing_covers_every_row_once_per_epoch():
    from softprompt.training.checkpoint import BatchStream as _batches

    lengths = [((i * 37) % 101) for i in range(1000)]
    stream = _batches(lengths, 16, seed=3, bucket=True)
    epoch = [next(stream) for _ in range(63)]  # ceil(1000 / 16) batches per epoch
    assert sorted(i for batch in epoch for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch) / len(epoch)
    plain = _batches(lengths, 16, seed=3, bucket=False)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                       for b in (next(plain) for _ in range(63))) / 63
    assert spread < plain_spread / 4
    again = _batches(lengths, 16, seed=3, bucket=True)
    assert [next(again) for _ in range(63)] == epoch  # seeded


def _poisoned(model, bad_steps):
    """Make model.loss return NaN on the given (1-based) calls."""
    calls = {"n": 0}
    original = model.loss

    def loss(batch):
        calls["n"] += 1
        value, figures = original(batch)
        return (value * float("nan") if calls["n"] in bad_steps else value), figures
    model.loss = loss
    return model


def test_non_finite_loss_rolls_back_and_lowers_the_learning_rate(tmp_path, sentiment_dir):
    backbone = tiny.tiny_backbone("llama")
    config = tiny.train_config(tmp_path, sentiment_dir, "unused", max_steps=16, eval_every=0, lr=0.05)
    task = load_task(str(sentiment_dir))
    model = _poisoned(build_prompted_model(config, backbone, task), {5, 12})
    result = train(config, backbone=backbone, task=task, model=model, progress=False)
    events = [r for r in result.history if r.get("event") == "rollback"]
    assert [e["step"] for e in events] == [5, 12] and events[1]["lr"] < events[0]["lr"]
    assert torch.isfinite(result.model.prompt.embeddings).all()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "rollback" for r in logged) == 2
    assert (tmp_path / "run" / "training.png").exists()


def test_persistent_divergence_stops_with_a_clear_error(tmp_path, sentiment_dir):
    from softprompt.training.guard import TrainingDivergedError

    backbone = tiny.tiny_backbone("llama")
    config = tiny.train_config(tmp_path, sentiment_dir, "unused", max_steps=16, eval_every=0, max_rollbacks=2)
    task = load_task(str(sentiment_dir))
    model = _poisoned(build_prompted_model(config, backbone, task), set(range(3, 100)))
    with pytest.raises(TrainingDivergedError, match="after 2 rollbacks.*lower --lr"):
        train(config, backbone=backbone, task=task, model=model, progress=False)


def test_exploding_gradient_is_caught():
    from softprompt.training.guard import DivergenceGuard

    prompt = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(prompt.parameters(), lr=1.0)
    guard = DivergenceGuard(prompt, optimizer, None)
    for norm in (1.0, 1.2, 0.9, 1.1, 1.0):
        assert guard.problem([0.5], norm) is None
    assert "over 1000x" in guard.problem([0.5], 5e3)
    before = prompt.weight.detach().clone()
    with torch.no_grad():
        prompt.weight.add_(1.0)
    guard.roll_back(6, "test")
    assert torch.equal(prompt.weight, before) and optimizer.param_groups[0]["lr"] == 0.5


def test_init_from_another_prompt_transfers_its_vectors(tmp_path, sentiment_dir, tiny_model_dir):
    from softprompt import build_prompted_model, load_backbone
    from softprompt.errors import ConfigError, IncompatiblePromptError
    from softprompt.formats import read_prompt_tensors

    base = dict(model=tiny_model_dir, data=str(sentiment_dir), max_steps=3, eval_every=0, batch_size=4,
                precision="fp32", device="cpu", num_virtual_tokens=6)
    source = train(TrainConfig(**base, output=str(tmp_path / "source")), progress=False).prompt_path
    backbone = load_backbone(tiny_model_dir, dtype="fp32")
    task = load_task(str(sentiment_dir))
    config = TrainConfig(**{**base, "num_virtual_tokens": None}, init_from=str(source), output=str(tmp_path / "t"))
    model = build_prompted_model(config, backbone, task)
    torch.testing.assert_close(model.prompt.embeddings.detach(), read_prompt_tensors(source)[0]["prompt_embeddings"])
    result = train(config, backbone=backbone, task=task, progress=False)
    assert read_prompt_tensors(result.prompt_path)[1]["init"] == "from:prompt.safetensors"
    with pytest.raises(ConfigError, match="has 6 virtual tokens"):
        build_prompted_model(config.replace(num_virtual_tokens=4), backbone, task)
    with pytest.raises(ConfigError, match="is a prompt prompt; this run trains --method deep"):
        build_prompted_model(config.replace(method="deep", num_virtual_tokens=None), backbone, task)
    with pytest.raises(IncompatiblePromptError):
        build_prompted_model(config, tiny.tiny_backbone("gpt2"), task)


def test_label_words_for_some_labels_only_are_refused(tmp_path, tiny_llama, sentiment_dir):
    """`--label-words positive=great` with two labels would leave 'negative' scored by its name without a word
    from the user: refused in one line, naming the label that has none."""
    from softprompt.errors import ConfigError

    task = load_task(str(sentiment_dir))
    config = TrainConfig(data=str(sentiment_dir), output=str(tmp_path / "x"), label_words=("positive=great",))
    with pytest.raises(ConfigError, match=r"gives words for \['positive'\] but not for \['negative'\]"):
        build_prompted_model(config, tiny_llama, task)
    both = config.replace(label_words=("positive=great", "negative=negative"))
    assert build_prompted_model(both, tiny_llama, task).verbalizer.words == (("negative",), ("great",))


@pytest.mark.parametrize("task_type", ["classification", "generation"])
def test_a_long_batch_runs_as_passes_with_the_whole_batchs_gradient(tmp_path, sentiment_dir, tiny_llama, task_type):
    from softprompt.training.loop import batch_passes

    config = tiny.train_config(tmp_path, sentiment_dir, "unused", task=task_type, label_field="label",
                     init="labels" if task_type == "classification" else "vocab")
    task = load_task(str(sentiment_dir), task=task_type, label_field="label")
    model = build_prompted_model(config, tiny_llama, task)
    model.train()
    rows = task.split("train")[:7]
    if task_type == "generation":  # targets of different lengths: passes must be weighted by target tokens
        rows = [{**row, "label": row["label"] + " great fun" * i} for i, row in enumerate(rows)]
    batch = model.make_batch(rows, "label")

    def gradient(passes):
        model.prompt.embeddings.grad = None
        total = 0.0
        for part, weight in passes:
            loss, _ = model.loss(part)
            (loss * weight).backward()
            total += loss.item() * weight
        return total, model.prompt.embeddings.grad.clone()

    assert batch_passes(model, rows, batch, 0, "label") == [(batch, 1.0)]
    assert len(batch_passes(model, rows, batch, batch["input_ids"].numel(), "label")) == 1
    split = batch_passes(model, rows, batch, -(-batch["input_ids"].numel() // 3), "label")  # a third, rounded up
    assert [part["input_ids"].shape[0] for part, _ in split] == [3, 3, 1]
    assert sum(weight for _, weight in split) == pytest.approx(1.0)
    whole_loss, whole = gradient([(batch, 1.0)])
    split_loss, parts = gradient(split)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))
    if task_type == "generation":  # token-mean loss: the passes are weighted by target tokens, not rows
        assert [round(w, 3) for _, w in split] != [round(3 / 7, 3), round(3 / 7, 3), round(1 / 7, 3)]
        rows_weighted, _ = gradient([(part, part["input_ids"].shape[0] / 7) for part, _ in split])
        assert rows_weighted != pytest.approx(whole_loss, rel=1e-3)
