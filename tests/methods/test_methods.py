"""The method table (`softprompt.methods.METHODS`), checked entry by entry on a tiny backbone: each prompt method
builds, trains only what its entry says (at the rates it says), writes exactly its tensors, loads back to the same
scores, counts its parameters as `--dry-run` will, and is refused in one line where a kind or an option does not
fit. A new entry is checked by adding it to the table."""

import dataclasses

import pytest
import tiny
import torch
from rows import SENTIMENT
from safetensors import safe_open

import softprompt as sp
from softprompt.config import option_field
from softprompt.data import TaskData
from softprompt.errors import ConfigError
from softprompt.kinds.table import CapabilityError, build_prompted_model, load_prompted_model
from softprompt.methods import METHODS, TRAIN_METHODS, MethodName, Shape, method_named
from softprompt.training.loop import _param_groups
from softprompt.training.state import trainable_parameters

ROWS = [{"text": t, "label": label} for t, label in SENTIMENT]
BODY = "Review: {text} Sentiment: {label}"
SINGLE_TASK = [name for name in TRAIN_METHODS if not METHODS[name].many_tasks]
# Options that a method's entry owns, each with a value away from its default.
OWN_VALUES = {"residual_bottleneck": 8, "residual_dropout": 0.2, "deep_reparam": 8, "dept_rank": 2, "dept_lr": 0.01,
              "tasks": "a=b", "mpt_teachers": "a=x.safetensors", "mpt_distill_weight": 0.5,
              "mpt_distill_temperature": 1.5}


def _task():
    return TaskData("sentiment", ROWS * 2, ROWS, ROWS, ("negative", "positive"), ("text",), "label", BODY)


def _config(tmp_path, method, **options):
    own = {"dept": {"dept_rank": 2}, "residual": {"residual_bottleneck": 8}}.get(method.value, {})
    return sp.TrainConfig(data="sentiment", output=str(tmp_path / "run"), max_steps=2, batch_size=4, eval_every=0,
                          lr=0.05, precision="fp32", checkpoint_every=0, method=method.value,
                          num_virtual_tokens=4, **{**own, **options})


def test_the_table_covers_one_enum_and_every_option_it_names_exists():
    assert set(METHODS) == set(MethodName)
    assert [m.value for m in TRAIN_METHODS] == ["prompt", "residual", "deep", "dept", "multitask"]
    for method in METHODS.values():
        assert method.summary and method.default_lr >= 0
        declared = ({f.metadata["flag"] for f in dataclasses.fields(method.option_group.options)}
                    if method.option_group else set())
        assert method.options <= declared                                   # it owns options its module declares
        for option in method.options:
            assert option_field(option).default != OWN_VALUES[option]   # declared, and the test's value differs
        if method.option_group:                                             # composed into TrainConfig as its group
            assert isinstance(getattr(sp.TrainConfig(data="x"), method.option_group.name), method.option_group.options)
        if method.writes_prompt:
            assert METHODS[method.file_method].file_method is method.file_method  # its file's method reads back
            assert method.tensors and method.from_tensors is not None
            assert method.start is not None or method.many_tasks
        else:
            assert not method.tensors and method.start is None


@pytest.mark.parametrize("name", SINGLE_TASK, ids=lambda m: m.value)
def test_each_prompt_method_trains_what_it_declares_and_loads_back_to_the_same_scores(tmp_path, tiny_llama, name):
    method = METHODS[name]
    config = _config(tmp_path, name)
    result = sp.train(config, backbone=tiny_llama, task=_task(), progress=False)
    model = result.model
    trained = dict(trainable_parameters(model))
    layers, heads, head_dim = tiny_llama.kv_layout()
    shape = Shape(tiny_llama.hidden_size, layers, heads, head_dim)
    assert sum(p.numel() for p in trained.values()) == method.parameters(config, shape, 4)  # what --dry-run counts
    groups = _param_groups(config, list(trained.items()))
    own = {name.rpartition(".")[2] for name in trained if name.rpartition(".")[2] in method.own_rates}
    assert len(groups) == 1 + bool(own)                                       # one group per rate
    for group in groups[1:]:
        assert group["lr"] == config.option(method.own_rates[next(iter(own))])
    with safe_open(str(result.prompt_path), "pt") as handle:
        assert set(handle.keys()) == set(method.tensors)                    # exactly its tensors, MLPs folded
        assert sp.read_prompt_tensors(result.prompt_path)[1]["method"] == method.file_method.value
    loaded = load_prompted_model(result.prompt_path, tiny_llama)
    with torch.no_grad():
        model.eval()
        batch = model.make_batch([{"text": r["text"]} for r in ROWS], None)
        torch.testing.assert_close(loaded.class_scores(batch), model.class_scores(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in TRAIN_METHODS if METHODS[n].needs], ids=lambda m: m.value)
def test_a_kind_without_what_a_method_needs_refuses_it_in_one_line(tmp_path, name):
    backbone = tiny.tiny_vision_backbone()
    images = [{"image": torch.zeros(1, 28, 28, dtype=torch.uint8), "label": str(i % 2)} for i in range(4)]
    task = TaskData("shades", images, images, images, ("0", "1"), ("image",), "label", "{image} {label}")
    options = {"tasks": "a=b"} if METHODS[name].many_tasks else {}
    with pytest.raises(CapabilityError) as info:
        build_prompted_model(_config(tmp_path, name, **options), backbone, task)
    message = str(info.value)
    capability = next(iter(METHODS[name].needs))
    assert "\n" not in message and "vision" in message and capability.value in message


@pytest.mark.parametrize("option", sorted(OWN_VALUES))
def test_an_option_of_another_method_is_refused_in_one_line(option):
    owner = next(m for m in METHODS.values() if option in m.options)
    other = MethodName.DEEP if owner.name is not MethodName.DEEP else MethodName.PROMPT
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        sp.TrainConfig(data="x", method=other.value, **{option: OWN_VALUES[option]})
    assert str(info.value) == (f"{flag} applies to --method {owner.name.value} ({owner.summary}); this run trains "
                               f"--method {other.value}: drop {flag} or give --method {owner.name.value}")


def test_baselines_are_for_compare_and_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="--method lora is a baseline, not a prompt: train takes prompt, residual"):
        sp.TrainConfig(data="x", method="lora")
    with pytest.raises(ConfigError, match="--methods 'bitfit': choose one of prompt, residual, deep, dept, multitask"):
        method_named("bitfit", "--methods")


def test_old_configs_with_reparam_still_load(tmp_path):
    assert sp.TrainConfig(data="x", reparam="none").method is MethodName.PROMPT
    assert sp.TrainConfig(data="x", reparam="residual").method is MethodName.RESIDUAL
    with pytest.raises(ConfigError, match="reparam: residual is for plain prompts"):
        sp.TrainConfig(data="x", reparam="residual", method="deep")
    old = tmp_path / "config.yaml"  # a run's config.yaml from before --method residual and the shared --head-lr
    old.write_text("data: x\nmethod: prompt\nresidual:\n  reparam: residual\n  bottleneck: 8\n"
                   "encoder:\n  pooling: cls\n  head_lr: 0.02\n")
    config = sp.TrainConfig.from_sources(old)
    assert (config.method, config.residual.bottleneck, config.encoder.pooling, config.head_lr) == (
        MethodName.RESIDUAL, 8, "cls", 0.02)
