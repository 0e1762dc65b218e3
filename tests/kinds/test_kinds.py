"""Every kind in the kind table, through every capability: train -> save -> load -> evaluate -> predict -> info,
the bank and the server where the kind serves, and a one-line refusal where it does not.

The cases are keyed by `KINDS`: a kind added to the table without a case here fails `test_every_kind_has_a_case`,
so the next kind is checked by these tests.
"""

import json

import pytest
import tiny
import torch
from fastapi.testclient import TestClient
from rows import SENTIMENT
from safetensors.torch import save_file
from tiny_clip import tiny_clip_backbone

import softprompt as sp
from softprompt.cli import main
from softprompt.data import TaskData
from softprompt.errors import ConfigError
from softprompt.evaluation import predict_scores
from softprompt.inference.bank import PromptBank
from softprompt.kinds.table import KINDS, CapabilityError, build_prompted_model, kind_of, load_prompted_model
from softprompt.protocols import (BackboneKind, CachesPromptPrefix, Capability, DecodesItself, JoinsMixedBatches,
                                 Prompted, Servable)
from softprompt.serve import ServeSettings, create_app

TEXT = [{"text": t, "label": label} for t, label in SENTIMENT]
ONE_TOKEN_WORDS = ("negative=bad", "positive=great")
COLOURS = ("red square", "green", "blue")
SOUNDS = ("yes", "no", "stop")


def _task(name, rows, labels, fields, template):
    return TaskData(name, rows * 2, rows, rows, tuple(labels), fields, "label", template)


def _images(channels, size, labels, n=6):
    g = torch.Generator().manual_seed(0)
    return [{"image": (torch.rand(channels, size, size, generator=g) * 255).to(torch.uint8), "label": labels[i % 3]}
            for i in range(n)]


def _audio(n=6):
    g = torch.Generator().manual_seed(0)
    return [{"audio": torch.randn(8000, generator=g) * 0.1, "label": SOUNDS[i % 3]} for i in range(n)]


def _text_task():
    return _task("sentiment", TEXT, ("negative", "positive"), ("text",), "Review: {text} Sentiment: {label}")


# kind -> (backbone builder, task builder, extra TrainConfig options)
CASES = {
    BackboneKind.CAUSAL_LM: (lambda: tiny.tiny_backbone("llama"), _text_task, {}),
    BackboneKind.MASKED_LM: (lambda: tiny.tiny_encoder_backbone("bert-mlm"), _text_task,
                             {"label_words": " ".join(ONE_TOKEN_WORDS)}),
    BackboneKind.ENCODER: (lambda: tiny.tiny_encoder_backbone("bert"), _text_task, {}),
    BackboneKind.SEQ2SEQ: (lambda: tiny.tiny_encoder_backbone("t5"), _text_task, {}),
    BackboneKind.VISION: (tiny.tiny_vision_backbone,
                          lambda: _task("shades", _images(1, 28, SOUNDS), SOUNDS, ("image",), "{image} {label}"), {}),
    BackboneKind.CLIP: (tiny_clip_backbone,
                        lambda: _task("colours", _images(3, 32, COLOURS), COLOURS, ("image",), "{image} {label}"),
                        {"init": "random"}),
    BackboneKind.SPEECH: (tiny.tiny_speech_backbone,
                          lambda: _task("commands", _audio(), SOUNDS, ("audio",), "{audio} {label}"), {}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each kind trained for 2 steps and saved: kind -> (backbone, task, result)."""
    out = {}
    for kind, (make_backbone, make_task, options) in CASES.items():
        backbone, task = make_backbone(), make_task()
        config = sp.TrainConfig(data=task.name, output=str(tmp_path_factory.mktemp(kind.value)), max_steps=2,
                                batch_size=4, eval_every=2, num_virtual_tokens=2, lr=0.05, precision="fp32",
                                checkpoint_every=0, **options)
        out[kind] = (backbone, task, sp.train(config, backbone=backbone, task=task, progress=False))
    return out


@pytest.fixture(scope="module")
def trained_dept(tmp_path_factory):
    """Each kind that takes DePT prompts trained with --method dept for 2 steps (its low-rank offset at a rate
    that moves it): kind -> (backbone, task, result)."""
    out = {}
    for kind in (k for k in BackboneKind if KINDS[k].can(Capability.DEPT)):
        make_backbone, make_task, options = CASES[kind]
        backbone, task = make_backbone(), make_task()
        config = sp.TrainConfig(data=task.name, output=str(tmp_path_factory.mktemp(f"{kind.value}-dept")),
                                max_steps=2, batch_size=4, eval_every=2, num_virtual_tokens=2, lr=0.05,
                                precision="fp32", checkpoint_every=0, method="dept", dept_rank=2, dept_lr=0.05,
                                **options)
        out[kind] = (backbone, task, sp.train(config, backbone=backbone, task=task, progress=False))
        assert out[kind][2].model.prompt.offset_b.abs().max() > 0  # the offset takes part in what is compared
    return out


def _runs(method, request):
    """The trained prompts of `method` (prompt or dept), by kind."""
    return request.getfixturevalue("trained" if method == "prompt" else "trained_dept")


def test_every_kind_has_a_case():
    assert set(CASES) == set(KINDS) == set(BackboneKind)


@pytest.mark.parametrize("kind", list(BackboneKind), ids=lambda k: k.value)
def test_train_save_load_eval_predict_info(kind, trained, capsys):
    backbone, task, result = trained[kind]
    assert result.steps == 2 and result.prompt_path.is_file()
    model = load_prompted_model(result.prompt_path, backbone)
    assert isinstance(model, Prompted) and kind_of(model).name is kind
    # the protocols a kind's capabilities promise are the ones its model implements
    assert isinstance(model, Servable) == KINDS[kind].can(Capability.SERVE)
    assert isinstance(model, JoinsMixedBatches) == KINDS[kind].can(Capability.MIXED_BATCH)
    assert isinstance(model, CachesPromptPrefix) == (kind is BackboneKind.CAUSAL_LM)  # no encoder disables one
    assert isinstance(model, DecodesItself) == (kind is BackboneKind.SEQ2SEQ)  # the causal path decodes the rest
    assert model.input_fields == task.text_fields and tuple(model.labels) == task.labels
    rows = [{f: r[f] for f in task.text_fields} for r in task.test]
    batch = {k: v.to(backbone.device) for k, v in model.make_batch(rows, None).items()}
    with torch.no_grad():  # the file holds exactly what trained (prompt and any head)
        torch.testing.assert_close(model.class_scores(batch), result.model.class_scores(batch))
    scores = sp.evaluate(model, task.test)
    predicted = model.classify(rows)
    right = sum(p == r[task.label_field] for p, r in zip(predicted, task.test))
    assert scores["n"] == len(task.test) and scores["accuracy"] == pytest.approx(right / len(task.test))
    scored = predict_scores(model, rows)  # what `softprompt predict --json` prints
    assert predicted == [model.labels[int(i)] for i in scored.argmax(-1)]
    assert main(["info", str(result.prompt_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"]["kind"] == kind.value and info["template"] == model.template_source


@pytest.mark.parametrize("kind", list(BackboneKind), ids=lambda k: k.value)
def test_what_a_kind_cannot_do_is_refused_in_one_line(kind, trained):
    entry = KINDS[kind]
    missing = [c for c in Capability if not entry.can(c)]
    assert (kind is BackboneKind.CAUSAL_LM) == (not missing)  # the causal LM does everything
    for capability in missing:
        with pytest.raises(CapabilityError) as info:
            entry.require(capability, "here")
        message = str(info.value)
        assert "\n" not in message and kind.value in message and capability.value in message
        assert "it can train, eval, predict and info" in message


@pytest.mark.parametrize("kind", list(BackboneKind), ids=lambda k: k.value)
def test_another_kinds_option_is_refused_not_ignored(kind):
    backbone, make_task = CASES[kind][0](), CASES[kind][1]
    owned = {option: other for other in KINDS.values() if other.options for option in other.options.flat_names}
    for other in KINDS.values():  # each kind's group is declared in its own folder and composed into TrainConfig
        if other.options:
            assert other.options.options.__module__.startswith("softprompt.kinds.")
            assert isinstance(getattr(sp.TrainConfig(data="x"), other.options.name), other.options.options)
    assert set(owned) == {"vpt_deep", "coop_class_specific", "coop_class_token_position", "encoder_prompt_tokens",
                          "pooling"}
    changed = {"vpt_deep": True, "coop_class_specific": True, "coop_class_token_position": "front",
               "encoder_prompt_tokens": 2, "pooling": "cls"}
    for option, other in owned.items():
        config = sp.TrainConfig(data="x", **{option: changed[option]})
        if other is KINDS[kind]:
            continue
        with pytest.raises(ConfigError) as info:
            build_prompted_model(config, backbone, make_task())
        flag = "--" + option.replace("_", "-")
        assert str(info.value) == (f"{flag} applies to {other.name.value} backbones ({other.summary}); --model "
                                   f"{backbone.name} is a {kind.value} backbone ({KINDS[kind].summary}): drop {flag}")


@pytest.mark.parametrize("method", ["prompt", "dept"])
@pytest.mark.parametrize("kind", list(BackboneKind), ids=lambda k: k.value)
def test_bank_scores_equal_predict_or_the_kind_is_refused(kind, method, request):
    if method == "dept" and not KINDS[kind].can(Capability.DEPT):
        backbone, make_task = CASES[kind][0](), CASES[kind][1]
        with pytest.raises(CapabilityError, match=f"a {kind.value} backbone .* does not support DePT"):
            build_prompted_model(sp.TrainConfig(data="x", method="dept"), backbone, make_task())
        return
    backbone, task, result = _runs(method, request)[kind]
    if not KINDS[kind].can(Capability.SERVE):
        with pytest.raises(CapabilityError, match=f"a {kind.value} backbone .* does not support serving"):
            PromptBank(backbone)
        return
    bank = PromptBank(backbone)
    bank.add("task", result.prompt_path)
    rows = [{"text": r["text"]} for r in task.test]
    got = bank.classify([("task", row) for row in rows])
    expected = predict_scores(load_prompted_model(result.prompt_path, backbone), rows)
    labels = bank.get("task").labels
    torch.testing.assert_close(torch.tensor([[g.scores[label] for label in labels] for g in got]), expected,
                               atol=1e-4, rtol=1e-4)
    assert [g.label for g in got] == [labels[int(i)] for i in expected.argmax(-1)]


@pytest.mark.parametrize("method", ["prompt", "dept"])
@pytest.mark.parametrize("kind", [k for k in BackboneKind if KINDS[k].can(Capability.SERVE)], ids=lambda k: k.value)
def test_server_classify_equals_predict(kind, method, request, tmp_path):
    backbone, task, result = _runs(method, request)[kind]
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "task.safetensors").write_bytes(result.prompt_path.read_bytes())
    rows = [r["text"] for r in task.test]
    expected = predict_scores(load_prompted_model(result.prompt_path, backbone), [{"text": t} for t in rows])
    settings = ServeSettings(reload_interval=0, batch_wait_ms=2, max_input_tokens=40)
    with TestClient(create_app(PromptBank(backbone), folder, settings)) as client:
        listed = client.get("/v1/prompts").json()
        assert [p["name"] for p in listed["data"]] == ["task"] and listed["not_loaded"] == []
        response = client.post("/v1/classify", json={"prompt": "task", "inputs": rows})
        assert response.status_code == 200, response.text
        labels = listed["data"][0]["labels"]
        got = torch.tensor([[r["scores"][label] for label in labels] for r in response.json()["results"]])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _crafted(path, metadata: str):
    save_file({"prompt_embeddings": torch.zeros(2, 32)}, str(path), metadata={"format": "softprompt",
                                                                               "softprompt": metadata})


def test_a_folder_with_every_kind_and_crafted_files_starts_a_healthy_server(trained, tmp_path):
    """One prompt of every kind, plus crafted files, in the folder of a causal-LM server: the causal prompt is
    served, every other file is listed as not loaded with its reason, and the server stays healthy."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    for kind, (_, _, result) in trained.items():
        (folder / f"{kind.value}.safetensors").write_bytes(result.prompt_path.read_bytes())
    _crafted(folder / "list-metadata.safetensors", "[1, 2, 3]")
    _crafted(folder / "no-backbone.safetensors", json.dumps({"backbone": None, "num_virtual_tokens": 2}))
    _crafted(folder / "zzz-broken-json.safetensors", "{")
    (folder / "truncated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    backbone = trained[BackboneKind.CAUSAL_LM][0]
    settings = ServeSettings(reload_interval=0, batch_wait_ms=2, admin_token="t")
    with TestClient(create_app(PromptBank(backbone), folder, settings)) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        listed = client.get("/v1/prompts").json()
        assert [p["name"] for p in listed["data"]] == ["causal_lm"]
        reasons = {p["name"]: p["reason"] for p in listed["not_loaded"]}
        assert set(reasons) == {k.value for k in BackboneKind if k is not BackboneKind.CAUSAL_LM} | {
            "list-metadata", "no-backbone", "zzz-broken-json", "truncated"}
        assert all(reason and "\n" not in reason for reason in reasons.values())
        assert "metadata" in reasons["list-metadata"]
        response = client.post("/v1/classify", json={"prompt": "causal_lm", "inputs": ["great fun"]})
        assert response.status_code == 200, response.text
        crafted = (folder / "list-metadata.safetensors").read_bytes()
        upload = client.post("/v1/prompts", params={"name": "evil"}, content=crafted,
                             headers={"Authorization": "Bearer t"})
        assert upload.status_code == 422 and "metadata" in upload.json()["error"]["message"]
        assert client.get("/healthz").json()["prompts"] == 1
