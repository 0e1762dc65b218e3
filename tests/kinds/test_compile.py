"""Regional compilation: one compiled decoder block reused by every layer, eager fallback, and `--compile auto`."""

import pytest
import tiny
import torch
import yaml

from softprompt import TrainConfig, build_prompted_model, load_task, train
from softprompt.errors import ConfigError
from softprompt.kinds.causal_lm import backbone as causal_backbone


def _step(model, batch):
    model.prompt.embeddings.grad = None
    loss, _ = model.loss(batch)
    loss.backward()
    return loss.detach(), model.prompt.embeddings.grad.clone()


def _model_and_batch(backbone, sentiment_dir, tmp_path):
    task = load_task(str(sentiment_dir))
    config = tiny.train_config(tmp_path, sentiment_dir, "unused", num_virtual_tokens=4,
                     label_words="positive=great negative=bad")  # one token each: no cache in the step
    model = build_prompted_model(config, backbone, task)
    model.train()
    rows = task.split("train")
    return model, [model.make_batch(rows[:5]), model.make_batch(rows[3:11])]  # two lengths and batch sizes


def test_compiled_block_matches_eager_and_serves_every_layer(tmp_path, sentiment_dir):
    eager, compiled = tiny.tiny_backbone("llama"), tiny.tiny_backbone("llama")
    line = compiled.compile_for_training()
    assert line.startswith("compiled one decoder block for 2 layers"), line
    regional = compiled.decoder_layers()[0]._softprompt_compiled
    assert compiled.compile_for_training() == "decoder block already compiled"  # a sweep's second trial
    assert all(layer._softprompt_compiled is regional for layer in compiled.decoder_layers())
    model_e, batches = _model_and_batch(eager, sentiment_dir, tmp_path)
    model_c, _ = _model_and_batch(compiled, sentiment_dir, tmp_path)
    before = regional.compiled_calls
    for batch in batches:
        loss_e, grad_e = _step(model_e, batch)
        loss_c, grad_c = _step(model_c, batch)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)
    assert regional.compiled_calls - before == 2 * len(batches)  # both layers, every training forward
    with torch.no_grad():  # evaluation and serving stay eager
        model_c.eval()
        scores = model_c.class_scores(batches[0])
    assert regional.compiled_calls - before == 2 * len(batches) and regional.reason is None
    model_e.eval()
    with torch.no_grad():
        torch.testing.assert_close(scores, model_e.class_scores(batches[0]))


def test_a_failed_compile_falls_back_to_eager_with_one_warning(tmp_path, sentiment_dir, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("InductorError: no C++ compiler found\nsecond line")
        return run

    monkeypatch.setattr(causal_backbone.torch, "compile", broken)
    backbone = tiny.tiny_backbone("llama")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found\\); running eager"):
        line = backbone.compile_for_training()
    assert line == ("compiling the decoder block failed (RuntimeError: InductorError: no C++ compiler found); "
                    "training runs eager")
    assert backbone.compile_for_training().startswith("decoder block already compiled (eager since: RuntimeError")
    model, batches = _model_and_batch(backbone, sentiment_dir, tmp_path)
    reference, _ = _model_and_batch(tiny.tiny_backbone("llama"), sentiment_dir, tmp_path)
    torch.testing.assert_close(_step(model, batches[0])[0], _step(reference, batches[0])[0])


def test_compile_option_values_and_auto(tmp_path, sentiment_dir, tiny_model_dir):
    base = dict(data=str(sentiment_dir), output=str(tmp_path / "x"))
    assert TrainConfig(**base, compile=True).compile.value == "layers"   # earlier versions' configs: true/false
    assert TrainConfig(**base, compile=False).compile.value == "off"
    with pytest.raises(ConfigError, match="--compile 'fast': choose one of auto, layers, off"):
        TrainConfig(**base, compile="fast")
    # auto: a 12-step run on a tiny model stays eager, and config.yaml says why
    train(tiny.train_config(tmp_path, sentiment_dir, tiny_model_dir), progress=False)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resolved["compile"] == "off (auto: 12 steps < 100)"
    assert TrainConfig(**{k: v for k, v in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()).items()
                          if k != "resolved"}).compile.value == "auto"
    # layers: compiled whatever the size, and training still learns the same way as eager
    result = train(tiny.train_config(tmp_path, sentiment_dir, tiny_model_dir, compile="layers", output=str(tmp_path / "c"),
                           label_words="positive=great negative=bad"),
                   progress=False)
    resolved = yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["resolved"]
    assert resolved["compile"].startswith("compiled one decoder block for 2 layers")
    assert result.model.backbone.decoder_layers()[0]._softprompt_compiled.compiled_calls >= 24


def test_compile_layers_is_refused_where_there_is_no_decoder_block(tmp_path):
    from softprompt.training.loop import _compile_layers

    class Vision:
        name, kind = "tiny-vit", type("K", (), {"value": "vit"})()

    config = TrainConfig(data="rotten_tomatoes", output=str(tmp_path / "x"), compile="layers")
    with pytest.raises(ConfigError, match="--compile layers: backbone 'tiny-vit' \\(vit\\) has no decoder block"):
        _compile_layers(config, None, Vision(), 1, 500, trains_weights=False, say=print)
    assert _compile_layers(config.replace(compile="auto"), None, Vision(), 1, 500, trains_weights=False, say=print) == \
        "off (auto: a vit backbone)"
