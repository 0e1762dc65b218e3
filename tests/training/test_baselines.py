"""Baseline adaptation methods on tiny backbones, trained by the prompt-tuning loop."""

import pytest
import tiny
import torch
from safetensors.torch import load_file

from softprompt import ConfigError, TrainConfig, load_task, train
from softprompt.training.baselines import BottleneckAdapters, build_method, merge_lora, trainable_count


def _config(tmp_path, data_dir, **kw):
    base = dict(model="unused", data=str(data_dir), output=str(tmp_path / "run"), max_steps=16, eval_every=0,
                batch_size=8, lr=3e-2, precision="fp32", device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _loss(model, rows):
    with torch.no_grad():
        return model.loss(model.make_batch(rows))[0].item()


@pytest.mark.parametrize("name,arch,lr", [("lora", "llama", 3e-2), ("lora", "gpt2", 3e-2), ("adapter", "llama", 1e-2),
                                          ("adapter", "gpt2", 1e-2), ("full", "llama", 3e-3), ("probe", "llama", 3e-2),
                                          ("deep", "gpt2", 3e-2)])
def test_method_trains_only_its_parameters_and_writes_its_artefact(tmp_path, sentiment_dir, name, arch, lr):
    backbone = tiny.tiny_backbone(arch)
    task = load_task(str(sentiment_dir))
    config = _config(tmp_path, sentiment_dir, lr=lr)
    method = build_method(name, config, backbone, task)
    frozen = {n: p.detach().clone() for n, p in backbone.model.named_parameters() if not p.requires_grad}
    count = trainable_count(method.model)
    assert 0 < count < (sum(p.numel() for p in backbone.model.parameters()) + 1 if name != "full" else 10 ** 9)
    before = _loss(method.model, task.train)
    result = train(config, backbone=backbone, task=task, model=method.model, save=method.save, progress=False)
    assert _loss(result.model, task.train) < before
    for n, p in backbone.model.named_parameters():  # what the method does not train stays bit-identical
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    if name == "full":
        assert not frozen
    if name != "deep":
        tensors = load_file(result.prompt_path)
        assert sum(t.numel() for t in tensors.values()) == count
        assert result.prompt_path.name == f"{name}.safetensors"


def test_adapters_start_as_the_identity_and_follow_the_paper_placement(tiny_llama, sentiment_dir, tmp_path):
    task = load_task(str(sentiment_dir))
    config = _config(tmp_path, sentiment_dir)
    plain = build_method("zeroshot", config, tiny_llama, task)
    batch = plain.model.make_batch(task.test, label_field=None)
    with torch.no_grad():
        reference = plain.model.class_scores(batch)
    for placement, per_layer in (("houlsby", 2), ("pfeiffer", 1)):
        adapters = BottleneckAdapters(tiny_llama, bottleneck=4, placement=placement)
        assert len(adapters.adapters) == per_layer * 2  # two decoder layers
        with torch.no_grad():
            torch.testing.assert_close(plain.model.class_scores(batch), reference)  # zero up-projection
            adapters.adapters[0].up.weight.fill_(0.1)
            assert (plain.model.class_scores(batch) - reference).abs().max() > 1e-5
        adapters.remove()
        with torch.no_grad():
            torch.testing.assert_close(plain.model.class_scores(batch), reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_merges_into_the_bare_architecture_with_the_same_scores(arch, tmp_path, sentiment_dir):
    backbone = tiny.tiny_backbone(arch)
    task = load_task(str(sentiment_dir))
    bare = {n: type(m) for n, m in backbone.model.named_modules()}
    method = build_method("lora", _config(tmp_path, sentiment_dir), backbone, task)
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)  # a trained-looking update (B starts at zero)
    batch = method.model.make_batch(task.test, label_field=None)
    with torch.no_grad():
        unmerged = method.model.class_scores(batch)
        assert merge_lora(backbone.model) == (4 if arch == "llama" else 2)  # q, v (GPT-2: fused c_attn) x 2 layers
        merged = method.model.class_scores(batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert {n: type(m) for n, m in backbone.model.named_modules()} == bare  # no LoRA layer left
    assert not any("lora_" in n for n, _ in backbone.model.named_parameters())


def test_zeroshot_trains_nothing_and_bad_names_are_refused(tmp_path, sentiment_dir, tiny_llama):
    task = load_task(str(sentiment_dir))
    config = _config(tmp_path, sentiment_dir)
    method = build_method("zeroshot", config, tiny_llama, task)
    assert not method.trains and trainable_count(method.model) == 0
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train(config, backbone=tiny_llama, task=task, model=method.model, progress=False)
    with pytest.raises(ConfigError, match="method .prefix-lm.: choose one of prompt, residual, deep, dept, multitask, lora"):
        build_method("prefix-lm", config, tiny_llama, task)


def test_compare_cli_runs_methods_in_their_own_processes(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    import json

    from softprompt.cli import main

    out = tmp_path / "cmp"
    code = main(["compare", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--methods",
                 "zeroshot,prompt,lora,probe", "--seeds", "2", "--max-steps", "4", "--batch-size", "8",
                 "--precision", "fp32", "--output", str(out)])
    assert code == 0
    table = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in table] == ["zeroshot", "prompt", "lora", "probe"]
    for row in table:
        assert {"trainable_params", "artifact_bytes", "accuracy", "accuracy_std", "train_seconds", "peak_rss_mb",
                "latency_ms"} <= set(row), row
    byname = {r["method"]: r for r in table}
    assert byname["zeroshot"]["trainable_params"] == 0 and byname["zeroshot"]["seeds"] == 1
    assert byname["prompt"]["seeds"] == 2 and byname["prompt"]["artifact_bytes"] > 0
    assert byname["lora"]["trainable_params"] > byname["prompt"]["trainable_params"]
    assert byname["lora"]["unmerged_latency_overhead"] > 0  # timed unmerged, then served merged
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert all(r["merged_layers"] == 4 for r in runs if r["method"] == "lora")
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lora |" in capsys.readouterr().out
    assert main(["compare", "--data", str(sentiment_dir), "--methods", "prompt,bitfit"]) == 2
    assert "--methods 'bitfit': choose one of prompt, residual, deep, dept, lora" in capsys.readouterr().err
    assert main(["compare", "--data", str(sentiment_dir), "--methods", "prompt", "--seeds", "0"]) == 2


def test_a_failed_method_keeps_the_others():
    from softprompt.tools.compare import aggregate
    from softprompt.methods import MethodName

    ok = {"method": "prompt", "seed": 0, "trainable_params": 10, "backbone_params": 1000, "artifact_bytes": 99,
          "accuracy": 0.8, "macro_f1": 0.8, "train_seconds": 1.0, "peak_rss_mb": 10.0, "latency_ms": 2.0,
          "bare_latency_ms": 1.0, "test_n": 8, "steps": 4, "lr": 0.03}
    table = aggregate([ok, {**ok, "seed": 1, "accuracy": 0.6}, {"method": "full", "seed": 0, "error": "MemoryError"}],
                      [MethodName.PROMPT, MethodName.FULL])
    assert table[0]["accuracy"] == pytest.approx(0.7) and table[0]["accuracy_std"] == pytest.approx(0.1414, abs=1e-3)
    assert table[0]["trainable_percent"] == pytest.approx(1.0) and table[0]["latency_overhead"] == pytest.approx(2.0)
    assert table[1] == {"method": "full", "error": "MemoryError"}


def test_compare_has_rows_for_residual_and_dept(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    import json

    from safetensors import safe_open

    from softprompt.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--methods",
                 "prompt,residual,dept", "--seeds", "1", "--max-steps", "2", "--batch-size", "8",
                 "--precision", "fp32", "--output", str(out)]) == 0
    table = {r["method"]: r for r in json.loads((out / "compare.json").read_text())}
    assert list(table) == ["prompt", "residual", "dept"] and not any("error" in r for r in table.values())
    d = 32  # the tiny backbone's hidden size
    assert table["prompt"]["trainable_params"] == 20 * d
    assert table["residual"]["trainable_params"] > 20 * d                  # its MLP trains ...
    assert 10 * d < table["dept"]["trainable_params"] <= 20 * d           # within a 20-token prompt's count
    runs = {json.loads(line)["method"]: json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()}
    # ... and residual's MLP is folded away: its artefact holds the same one (20, d) tensor as a plain prompt's.
    # (Byte counts are not compared: the header's JSON holds measured timings and scores, whose text length varies.)
    for method in ("prompt", "residual"):
        with safe_open(runs[method]["artifact"], "pt") as handle:
            assert list(handle.keys()) == ["prompt_embeddings"]
            assert list(handle.get_slice("prompt_embeddings").get_shape()) == [20, d]
    mlp_bytes = 4 * (table["residual"]["trainable_params"] - 20 * d)
    assert abs(table["residual"]["artifact_bytes"] - table["prompt"]["artifact_bytes"]) < mlp_bytes // 10
    with safe_open(runs["dept"]["artifact"], "pt") as handle:
        assert json.loads(handle.metadata()["softprompt"])["method"] == "dept"
    printed = capsys.readouterr().out
    assert "| residual |" in printed and "| dept |" in printed


def test_compare_resume_keeps_finished_rows_in_the_file_when_an_earlier_method_fails(tmp_path, monkeypatch):
    """Rows kept from an earlier invocation stay in runs.jsonl while new runs are written (a failed run listed
    before them once dropped them from the file, so the next invocation trained them again)."""
    import json
    import subprocess

    from softprompt.tools import compare as compare_module

    base = {"model": "m", "data": "d", "batch_size": 16, "steps": 5, "trainable_params": 1, "backbone_params": 10,
            "artifact_bytes": 0, "accuracy": 0.8, "macro_f1": 0.8, "train_seconds": 1.0, "peak_rss_mb": 1.0,
            "latency_ms": 1.0, "bare_latency_ms": 1.0, "test_n": 4, "lr": 0.1}
    kept = [{**base, "method": "lora", "seed": 0}, {**base, "method": "full", "seed": 0}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    monkeypatch.setattr(compare_module, "plot", lambda *args, **kwargs: None)
    monkeypatch.setattr(compare_module.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(
        args, 1, stdout="", stderr="Error: the worker failed"))
    table = compare_module.compare("m", "d", compare_module.parse_methods("prompt,lora,full"), seeds=1, max_steps=5,
                                   output=tmp_path, resume=True, log=lambda line: None)
    written = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert {(r["method"], "error" in r) for r in written} == {("prompt", True), ("lora", False), ("full", False)}
    assert [r["method"] for r in table if "error" not in r] == ["lora", "full"]
