"""Baseline adaptation methods on tiny backbones, trained by the prompt-tuning loop."""

import pytest
import torch
from safetensors.torch import load_file

from softprompt import ConfigError, TrainConfig, load_task, train
from softprompt.training.methods import BottleneckAdapters, build_method, trainable_count

import tiny


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


def test_zeroshot_trains_nothing_and_bad_names_are_refused(tmp_path, sentiment_dir, tiny_llama):
    task = load_task(str(sentiment_dir))
    config = _config(tmp_path, sentiment_dir)
    method = build_method("zeroshot", config, tiny_llama, task)
    assert not method.trains and trainable_count(method.model) == 0
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train(config, backbone=tiny_llama, task=task, model=method.model, progress=False)
    with pytest.raises(ConfigError, match="choose from"):
        build_method("prefix-lm", config, tiny_llama, task)
