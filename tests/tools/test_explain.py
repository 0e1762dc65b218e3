import json

import pytest
import torch

from softprompt import (
    ConfigError,
    DeepPrompt,
    PromptedModel,
    SoftPrompt,
    Template,
    Verbalizer,
    build_template,
    save_prompt,
)
from softprompt.cli import main
from softprompt.tools.explain import compare_prompts, explain_prompt, projected

BODY = "Review: {text} Sentiment: {label}"


def _from_tokens(backbone, ids, noise=0.0, seed=0):
    """A prompt whose vectors are real token embeddings (plus optional noise)."""
    torch.manual_seed(seed)
    vectors = backbone.input_embedding_matrix().detach()[torch.tensor(ids)].clone()
    vectors += noise * torch.randn_like(vectors)
    return PromptedModel(backbone, SoftPrompt(vectors), build_template(BODY, "prefix", len(ids)),
                         Verbalizer.from_spec(["negative", "positive"]), max_length=64)


def test_nearest_tokens_recover_the_tokens_a_prompt_was_made_of(tiny_llama):
    ids = [17, 45, 99, 123]
    model = _from_tokens(tiny_llama, ids)
    for metric in ("cosine", "l2"):
        report = explain_prompt(model, top_k=3, metric=metric)
        assert [t["neighbours"][0]["id"] for t in report["tokens"]] == ids
        best = report["tokens"][0]["neighbours"][0]["score"]
        assert best == pytest.approx(1.0 if metric == "cosine" else 0.0, abs=1e-4)
        assert report["tokens"][0]["neighbours"][1]["score"] < best  # ranked
    assert report["norms"]["prompt_over_vocabulary"] > 0 and report["num_virtual_tokens"] == 4


def test_projection_is_exact_for_a_hard_prompt_and_differs_for_a_soft_one(tiny_llama):
    batch_rows = [{"text": "a great film"}, {"text": "boring"}]
    hard = _from_tokens(tiny_llama, [17, 45, 99])
    back = projected(hard)
    batch = hard.make_batch(batch_rows, label_field=None)
    with torch.no_grad():
        torch.testing.assert_close(back.class_scores(batch), hard.class_scores(batch))
        soft = _from_tokens(tiny_llama, [17, 45, 99], noise=0.05)
        assert (projected(soft).class_scores(batch) - soft.class_scores(batch)).abs().max() > 1e-4
    assert torch.equal(projected(soft).prompt.embeddings, hard.prompt.embeddings)  # noise small: same tokens


def test_compare_prompts(tiny_llama):
    a = _from_tokens(tiny_llama, [17, 45, 99])
    same = compare_prompts(a, a)
    assert same["tokenwise"] == pytest.approx([1.0, 1.0, 1.0]) and same["mean_vector_cosine"] == pytest.approx(1.0)
    b = _from_tokens(tiny_llama, [99, 45, 17, 200])
    other = compare_prompts(a, b)
    assert other["sizes"] == [3, 4] and other["tokenwise"][1] == pytest.approx(1.0)
    assert other["best_match_mean"] == pytest.approx(1.0) and other["tokenwise_mean"] < 1.0
    keys = torch.zeros(2, 3, 2, 8)
    deep = PromptedModel(tiny_llama, DeepPrompt(keys, keys, 32), Template.parse(BODY),
                         Verbalizer.from_spec(["negative", "positive"]))
    with pytest.raises(ConfigError, match="deep prompt"):
        explain_prompt(deep)


def test_explain_cli(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    from softprompt import load_backbone

    backbone = load_backbone(tiny_model_dir, dtype=torch.float32)
    first = save_prompt(tmp_path / "a.safetensors", _from_tokens(backbone, [17, 45, 99], noise=0.05))
    second = save_prompt(tmp_path / "b.safetensors", _from_tokens(backbone, [17, 45, 98], noise=0.05, seed=1))
    assert main(["explain", str(first), "--top-k", "2", "--json", "--project", "--data", str(sentiment_dir),
                 "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["neighbours"][0]["id"] for t in report["tokens"]] == [17, 45, 99]
    assert set(report["projection"]) >= {"soft", "projected", "gap"} and report["projection"]["n"] == 8
    assert (tmp_path / "a.explain.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", str(first), str(second), "--json", "--precision", "fp32"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["tokenwise"][0] > 0.9 and len(compared["tokenwise"]) == 3
    assert main(["explain", str(first), "--project"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["explain", str(first), "--metric", "dot"]) == 2
