"""Visual prompt tuning on a tiny random ViT: placement, gradients, deep prompts, file round trip, CLI."""

import json

import pytest
import torch
from tiny import tiny_vision_backbone, tiny_vit

import softprompt as sp
from softprompt.formats import read_prompt_tensors, save_prompt
from softprompt.frozen import weights_fingerprint
from softprompt.kinds.table import load_prompted_model
from softprompt.kinds.vision.vpt import VPTModel
from softprompt.prompts import SoftPrompt
from softprompt.protocols import BackboneKind

LABELS = ("bag", "sandal", "shirt")


def _rows(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": (torch.rand(1, 28, 28, generator=g) * 255).to(torch.uint8), "label": LABELS[i % 3]}
            for i in range(n)]


@pytest.fixture(scope="module")
def backbone():
    return tiny_vision_backbone()


def test_no_prompt_equals_the_plain_vit(backbone):
    model = VPTModel(backbone, SoftPrompt(torch.zeros(0, 32)), LABELS)
    batch = model.make_batch(_rows(), None)
    with torch.no_grad():
        ours = model.features(batch)
        pixels = (batch["pixel_values"] - 0.5) / 0.5
        plain = backbone.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("deep", [False, True])
def test_prompt_and_head_get_gradients_backbone_does_not(backbone, deep):
    torch.manual_seed(0)
    model = VPTModel(backbone, VPTModel.initial_prompt(backbone, 4, deep=deep), LABELS, deep=deep)
    assert model.prompt.num_virtual_tokens == (8 if deep else 4)
    loss, figures = model.loss(model.make_batch(_rows()))
    loss.backward()
    grad = model.prompt.embeddings.grad
    assert grad is not None and model.head.weight.grad.abs().sum() > 0
    per_layer = grad.view(-1, 4, 32).abs().sum(dim=(1, 2))
    assert bool((per_layer > 0).all())  # deep: every layer's own tokens are used
    assert all(p.grad is None for p in backbone.parameters())
    before = model.class_scores(model.make_batch(_rows(), None)).detach()
    with torch.no_grad():
        model.prompt.embeddings[-4:].add_(torch.randn(4, 32))  # the last layer's prompt (deep) / the whole prompt (shallow)
    assert not torch.allclose(model.class_scores(model.make_batch(_rows(), None)), before)


def test_file_round_trip_keeps_prompt_head_and_depth(backbone, tmp_path):
    torch.manual_seed(1)
    model = VPTModel(backbone, VPTModel.initial_prompt(backbone, 3, deep=True), LABELS, deep=True)
    path = save_prompt(tmp_path / "vpt.safetensors", model, init="random")
    tensors, meta = read_prompt_tensors(path)
    assert meta["backbone"]["kind"] == "vision" and meta["vision"]["deep"] and meta["vision"]["tokens_per_layer"] == 3
    assert tensors["prompt_embeddings"].shape == (6, 32) and meta["tokenizer"] is None
    again = load_prompted_model(path, backbone)
    batch = model.make_batch(_rows(), None)
    with torch.no_grad():
        torch.testing.assert_close(again.class_scores(batch), model.class_scores(batch))


def test_train_and_eval_through_the_cli(tmp_path, monkeypatch, capsys):
    from softprompt.cli import main
    from softprompt.data.builtin import BUILTIN_DATASETS, BuiltinDataset

    folder = tmp_path / "vit"
    tiny_vit().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.5]}))
    assert sp.load_backbone(str(folder)).kind is BackboneKind.VISION
    # Images where the class is the brightness: learnable from the [CLS] state.
    def rows(n, seed):
        g = torch.Generator().manual_seed(seed)
        return [{"image": torch.full((1, 28, 28), 40 + 80 * (i % 3)) .to(torch.uint8)
                 + (torch.rand(1, 28, 28, generator=g) * 30).to(torch.uint8), "label": LABELS[i % 3]} for i in range(n)]
    monkeypatch.setitem(BUILTIN_DATASETS, "tiny-images", BuiltinDataset(
        "tiny-images", "-", "{image} {label}", "test images",
        lambda: {"train": rows(48, 0), "validation": rows(12, 1), "test": rows(12, 2)}, fields=("image",)))
    before = weights_fingerprint(sp.load_backbone(str(folder), dtype="fp32").model, full=True)
    out = tmp_path / "run"
    code = main(["train", "--model", str(folder), "--data", "tiny-images", "--output", str(out), "--max-steps", "30",
                 "--batch-size", "12", "--num-virtual-tokens", "2", "--vpt-deep", "--lr", "0.05", "--eval-every", "10",
                 "--precision", "fp32", "--quiet", "--checkpoint-every", "10"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["validation"]["accuracy"] > 0.6  # chance is 1/3
    tensors, meta = read_prompt_tensors(out / "prompt.safetensors")
    assert meta["training"]["trainable_params"] == 2 * 2 * 32 + 32 * 3 + 3
    code = main(["eval", "--prompt", str(out / "prompt.safetensors"), "--model", str(folder), "--data", "tiny-images",
                 "--precision", "fp32", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 12 and result["accuracy"] > 0.6
    assert weights_fingerprint(sp.load_backbone(str(folder), dtype="fp32").model, full=True) == before
