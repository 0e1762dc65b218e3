import json

import pytest
import tiny
import torch

from softprompt import (
    ConfigError,
    PromptedModel,
    SoftPrompt,
    Verbalizer,
    build_template,
    load_prompted_model,
    save_prompt,
)
from softprompt.tools.interop import export_peft, import_peft

ROWS = ["a great film with a fine cast", "boring", "the quick brown fox jumps over the lazy dog"]


def _peft_scores(peft_model, tokenizer, texts, label_ids):
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            out.append(logits.log_softmax(-1)[label_ids])
    return torch.stack(out)


def test_export_loads_in_peft_with_the_same_predictions(tmp_path):
    from peft import PeftModel

    backbone = tiny.tiny_backbone("llama")
    torch.manual_seed(0)
    template = build_template("Review: {text} Sentiment: {label}", "prefix", 5)
    model = PromptedModel(backbone, SoftPrompt(torch.randn(5, 32) * 0.5), template,
                          Verbalizer.from_spec(["negative", "positive"], ["negative=bad", "positive=great"]))
    path = save_prompt(tmp_path / "p.safetensors", model)
    out = export_peft(path, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 5

    peft_model = PeftModel.from_pretrained(tiny.tiny_model("llama"), str(out)).eval()
    label_ids = [w[0] for w in model.word_ids]
    theirs = _peft_scores(peft_model, backbone.tokenizer, [f"Review: {t} Sentiment:" for t in ROWS], label_ids)
    ours = model.class_scores(model.make_batch([{"text": t} for t in ROWS], label_field=None))
    torch.testing.assert_close(theirs, ours.detach(), atol=1e-4, rtol=1e-4)
    assert model.classify(ROWS) == [model.verbalizer.labels[i] for i in theirs.argmax(-1).tolist()]


def test_peft_trained_adapter_imports_and_predicts_identically(tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(tiny.tiny_model("llama"), PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                               num_virtual_tokens=6))
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    backbone = tiny.tiny_backbone("llama")
    path = import_peft(tmp_path / "adapter", tmp_path / "imported.safetensors", backbone,
                       template="Review: {text} Sentiment: {label}", labels=["negative", "positive"],
                       label_words=["negative=bad", "positive=great"])
    model = load_prompted_model(path, backbone)
    label_ids = [w[0] for w in model.word_ids]
    theirs = _peft_scores(peft_model.eval(), backbone.tokenizer, [f"Review: {t} Sentiment:" for t in ROWS], label_ids)
    ours = model.class_scores(model.make_batch([{"text": t} for t in ROWS], label_field=None))
    torch.testing.assert_close(theirs, ours.detach(), atol=1e-4, rtol=1e-4)


def test_export_refuses_non_prefix_prompts(tmp_path, tiny_llama):
    template = build_template("Review: {text} Sentiment: {label}", "suffix", 3)
    model = PromptedModel(tiny_llama, SoftPrompt(torch.zeros(3, 32)), template, Verbalizer.from_spec(["a", "b"]))
    path = save_prompt(tmp_path / "p.safetensors", model)
    with pytest.raises(ConfigError, match="prefix prompts only"):
        export_peft(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_never_deletes_what_a_user_owns(tmp_path):
    """A non-empty target is refused (nothing touched); --overwrite replaces only a previous export; files and
    folders get the user's umask permissions."""
    import os
    import stat

    from softprompt.errors import ConfigError

    backbone = tiny.tiny_backbone("llama")
    model = PromptedModel(backbone, SoftPrompt(torch.randn(3, 32)), build_template("{text} {label}", "prefix", 3),
                          Verbalizer.from_spec(["negative", "positive"]))
    path = save_prompt(tmp_path / "p.safetensors", model)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("mine")
    with pytest.raises(ConfigError, match="already holds metrics.jsonl"):
        export_peft(path, run)
    with pytest.raises(ConfigError, match="already holds metrics.jsonl"):
        export_peft(path, run, overwrite=True)
    assert (run / "metrics.jsonl").read_text() == "mine" and os.listdir(run) == ["metrics.jsonl"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_peft(path, tmp_path / "file")
    out = export_peft(path, tmp_path / "adapter")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    with pytest.raises(ConfigError, match="--overwrite"):
        export_peft(path, out)
    assert export_peft(path, out, overwrite=True) == out and (out / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
