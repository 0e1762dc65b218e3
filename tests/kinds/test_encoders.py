"""Encoders with a light head, the masked-LM verbaliser, and encoder-decoders (tiny random BERT, T5, BART)."""

import json
import subprocess
import sys

import pytest
import torch
from rows import SENTIMENT
from tiny import save_tiny_encoder, tiny_encoder_backbone

import softprompt as sp
from softprompt.errors import ConfigError
from softprompt.formats import read_prompt_tensors, save_prompt
from softprompt.frozen import weights_fingerprint
from softprompt.kinds.table import detect_kind, load_prompted_model, prompted_model
from softprompt.kinds.encoder.models import EncoderClassifier, MaskedLMPromptedModel, Seq2SeqPromptedModel
from softprompt.prompts import SoftPrompt
from softprompt.protocols import BackboneKind
from softprompt.template import Template
from softprompt.verbalizer import Verbalizer

ROWS = [{"text": t, "label": label} for t, label in SENTIMENT]
LABELS = ("negative", "positive")
ONE_TOKEN_WORDS = ["negative=bad", "positive=great"]  # one token each in the tiny vocabulary (a [MASK] scores one)


@pytest.fixture(scope="module")
def backbones():
    return {arch: tiny_encoder_backbone(arch) for arch in ("bert", "bert-mlm", "t5", "bart")}


def _model(backbone, body="[soft:4] Review: {text} Sentiment: {label}", seed=0):
    template = Template.parse(body)
    torch.manual_seed(seed)
    prompt = SoftPrompt(torch.randn(template.num_virtual_tokens, backbone.hidden_size) * 0.5)
    return prompted_model(backbone, prompt, template, Verbalizer.from_spec(LABELS, ONE_TOKEN_WORDS), labels=LABELS)


def test_kind_from_config():
    from transformers import BertConfig, LlamaConfig, T5Config

    assert detect_kind(BertConfig(architectures=["BertModel"])) is BackboneKind.ENCODER
    assert detect_kind(BertConfig(architectures=["BertForMaskedLM"])) is BackboneKind.MASKED_LM
    assert detect_kind(T5Config()) is BackboneKind.SEQ2SEQ
    assert detect_kind(LlamaConfig(architectures=["LlamaForCausalLM"])) is BackboneKind.CAUSAL_LM
    assert detect_kind(LlamaConfig()) is BackboneKind.CAUSAL_LM


@pytest.mark.parametrize("arch,cls", [("bert", EncoderClassifier), ("bert-mlm", MaskedLMPromptedModel),
                                      ("t5", Seq2SeqPromptedModel), ("bart", Seq2SeqPromptedModel)])
def test_padding_does_not_change_scores_and_prompt_gets_gradients(backbones, arch, cls):
    model = _model(backbones[arch])
    assert type(model) is cls
    rows = [{"text": "great"}, {"text": "a dull and tedious movie with a thin plot"}]
    with torch.no_grad():
        together = model.class_scores(model.make_batch(rows, label_field=None))
        alone = torch.cat([model.class_scores(model.make_batch([r], label_field=None)) for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    loss, _ = model.loss(model.make_batch(ROWS[:4]))
    loss.backward()
    assert model.prompt.embeddings.grad is not None and model.prompt.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    with torch.no_grad():  # the prompt changes the answer (it is really in the input)
        model.prompt.embeddings.mul_(3.0)
        assert not torch.allclose(model.class_scores(model.make_batch(rows, label_field=None)), together)


def test_masked_lm_scores_the_mask_position(backbones):
    backbone = backbones["bert-mlm"]
    model = _model(backbone, "Review: {text} Sentiment: {label}")
    tok = backbone.tokenizer
    scores = model.word_scores(model.make_batch([{"text": "great fun"}], label_field=None))
    ids = [tok.cls_token_id] + tok("Review: great fun Sentiment:", add_special_tokens=False).input_ids + [
        tok.mask_token_id, tok.sep_token_id]
    with torch.no_grad():
        logits = backbone.model(input_ids=torch.tensor([ids])).logits[0, -2]
    words = [tok(" " + w, add_special_tokens=False).input_ids[0] for w in ("bad", "great")]
    torch.testing.assert_close(scores[0], torch.log_softmax(logits, -1)[words], atol=1e-5, rtol=1e-5)


def test_masked_lm_refuses_multi_token_words(backbones):
    with pytest.raises(ConfigError, match="one-token words"):
        prompted_model(backbones["bert-mlm"], SoftPrompt(torch.zeros(0, 32)), Template.parse("{text} {label}"),
                       Verbalizer.from_spec(LABELS, ["positive=wonderfulness"]), labels=LABELS)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_word_scores_equal_the_decoders_likelihood(backbones, arch):
    backbone = backbones[arch]
    model = _model(backbone, "Review: {text} Sentiment: {label}")
    model = prompted_model(backbone, model.prompt, model.template, Verbalizer.from_spec(LABELS), labels=LABELS)
    # 'negative' and 'positive' are 3 tokens each here: teacher-forced, compared with the model's own loss
    scores = model.word_scores(model.make_batch([{"text": "great fun"}], label_field=None))[0]
    tok = backbone.tokenizer
    source = torch.tensor([tok("Review: great fun Sentiment:", add_special_tokens=False).input_ids + [tok.eos_token_id]])
    for w, word in enumerate(LABELS):
        target = torch.tensor([tok(" " + word, add_special_tokens=False).input_ids])
        with torch.no_grad():
            out = backbone.model(input_ids=source, labels=target)
        assert scores[w].item() == pytest.approx(-out.loss.item() * target.shape[1], abs=1e-4)


def test_seq2seq_generation_trains_and_generates(backbones, tmp_path):
    backbone = backbones["t5"]
    template = Template.parse("[soft:3] Question: {text} Answer: {target}")
    model = prompted_model(backbone, SoftPrompt(torch.randn(3, 32) * 0.5), template, None)
    rows = [{"text": "the quick brown fox", "target": "jumps"}, {"text": "a great film", "target": "fun"}]
    optimizer = torch.optim.Adam(model.prompt.parameters(), lr=0.3)
    losses = []
    for _ in range(40):
        loss, _ = model.loss(model.make_batch(rows, "target"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses  # a near-uniform tiny decoder: the prompt moves it, slowly
    answers = model.generate(["the quick brown fox"], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)
    path = save_prompt(tmp_path / "gen.safetensors", model)
    again = load_prompted_model(path, backbone)
    assert type(again) is Seq2SeqPromptedModel and again.generate(["the quick brown fox"], max_new_tokens=4) == answers


def test_head_is_saved_in_the_prompt_file_and_reloads(backbones, tmp_path):
    backbone = backbones["bert"]
    model = _model(backbone)
    with torch.no_grad():
        model.head.weight.normal_()
    path = save_prompt(tmp_path / "p.safetensors", model)
    tensors, meta = read_prompt_tensors(path)
    assert set(tensors) == {"prompt_embeddings", "head.weight", "head.bias"}
    assert meta["head"]["pooling"] == "mean" and meta["labels"] == list(LABELS)
    assert meta["backbone"]["kind"] == "encoder"
    again = load_prompted_model(path, backbone)
    batch = model.make_batch(ROWS, label_field=None)
    with torch.no_grad():
        torch.testing.assert_close(again.class_scores(batch), model.class_scores(batch))


def test_encoder_without_labels_is_refused(backbones):
    with pytest.raises(ConfigError, match="classifies"):
        prompted_model(backbones["bert"], SoftPrompt(torch.zeros(2, 32)), Template.parse("[soft:2] {text} {target}"),
                       None)


@pytest.mark.parametrize("arch", ["bert", "bert-mlm", "t5"])
def test_train_and_eval_from_the_cli(tmp_path, sentiment_dir, arch):
    folder = save_tiny_encoder(tmp_path / f"tiny-{arch}", arch)
    before = weights_fingerprint(sp.load_backbone(folder, dtype="fp32").model, full=True)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "softprompt", "train", "--model", folder, "--data", str(sentiment_dir),
           "--output", str(out), "--max-steps", "12", "--batch-size", "4", "--num-virtual-tokens", "4",
           "--lr", "0.1", "--eval-every", "6", "--precision", "fp32", "--checkpoint-every", "0"]
    if arch == "bert-mlm":
        cmd += ["--label-words", " ".join(ONE_TOKEN_WORDS)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tensors, meta = read_prompt_tensors(out / "prompt.safetensors")
    assert meta["backbone"]["kind"] == sp.load_backbone(folder, dtype="fp32").kind.value
    head = 32 * 2 + 2 if arch == "bert" else 0
    assert meta["training"]["trainable_params"] == 4 * 32 + head
    assert ("head.weight" in tensors) == (arch == "bert")
    done = subprocess.run([sys.executable, "-m", "softprompt", "eval", "--prompt", str(out / "prompt.safetensors"), "--model",
                           folder, "--data", str(sentiment_dir), "--precision", "fp32", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    backbone = sp.load_backbone(folder, dtype="fp32")
    loaded = sp.load_prompted_model(out / "prompt.safetensors", backbone)
    test = sp.load_task(str(sentiment_dir)).test
    right = sum(p == r["label"] for p, r in zip(loaded.classify([{"text": r["text"]} for r in test]), test))
    assert result["n"] == len(test) and result["accuracy"] == pytest.approx(right / len(test))
    assert weights_fingerprint(backbone.model, full=True) == before  # the backbone never changed


def test_deep_prompts_are_refused_on_encoders(tmp_path, sentiment_dir, backbones):
    config = sp.TrainConfig(data=str(sentiment_dir), output=str(tmp_path / "d"), method="deep", max_steps=1)
    with pytest.raises(ConfigError, match="masked_lm backbone .* does not support deep prompts"):
        sp.train(config, backbone=backbones["bert-mlm"], progress=False)


def test_head_learning_rate_is_its_own_group_and_rollbacks_halve_each_group():
    from softprompt.training.guard import DivergenceGuard
    from softprompt.training.loop import _param_groups

    model = torch.nn.Module()
    model.prompt, model.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    named = list(model.named_parameters())
    config = sp.TrainConfig(data="x", lr=0.1, head_lr=0.01)
    groups = _param_groups(config, named)
    assert [len(g["params"]) for g in groups] == [2, 2] and groups[1]["lr"] == 0.01
    assert len(_param_groups(config.replace(head_lr=None), named)) == 1
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    guard = DivergenceGuard(model, optimizer, None)
    guard.roll_back(1, "test")
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.005]


@pytest.mark.parametrize("arch", ["bert", "bert-mlm", "t5"])
def test_gradient_checkpointing_on_a_kind_without_it_is_one_line(arch, sentiment_dir, tmp_path):
    from softprompt.kinds.table import CapabilityError

    config = sp.TrainConfig(model="unused", data=str(sentiment_dir), output=str(tmp_path / "run"), max_steps=1,
                            precision="fp32", device="cpu", gradient_checkpointing=True)
    with pytest.raises(CapabilityError) as info:
        sp.train(config, backbone=tiny_encoder_backbone(arch), progress=False)
    message = str(info.value)
    assert "\n" not in message and "does not support gradient checkpointing (--gradient-checkpointing)" in message
    assert not (tmp_path / "run" / "prompt.safetensors").exists()
