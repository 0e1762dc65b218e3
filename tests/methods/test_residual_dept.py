"""Residual prompt tuning (--method residual) and DePT (--method dept) on tiny backbones: what trains, what a
file holds, that every loader scores what trained, and the one-line refusals."""

import json

import pytest
import tiny
import torch
from rows import SENTIMENT
from safetensors import safe_open

import softprompt as sp
from softprompt.cli import main
from softprompt.data import TaskData
from softprompt.evaluation import predict_scores
from softprompt.inference.bank import PromptBank
from softprompt.inference.generate import generate
from softprompt.kinds.table import CapabilityError, build_prompted_model, load_prompted_model
from softprompt.methods.dept import DecomposedPrompt, dept_rank
from softprompt.methods.residual import ResidualPrompt
from softprompt.prompts import SoftPrompt
from softprompt.scoring import text_positions
from softprompt.tools.explain import projected
from softprompt.tools.interop import export_peft
from softprompt.training.loop import _optimizer, _param_groups
from softprompt.training.state import trainable_parameters

ROWS = [{"text": t, "label": label} for t, label in SENTIMENT]
BODY = "Review: {text} Sentiment: {label}"


def _task():
    return TaskData("sentiment", ROWS * 2, ROWS, ROWS, ("negative", "positive"), ("text",), "label", BODY)


def _config(tmp_path, **options):
    base = dict(data="sentiment", output=str(tmp_path / "run"), max_steps=3, batch_size=4, eval_every=0, lr=0.05,
                precision="fp32", checkpoint_every=0)
    return sp.TrainConfig(**{**base, **options})


def _inputs(rows=ROWS):
    return [{"text": r["text"]} for r in rows]


def _scores(model, rows):
    with torch.no_grad():
        return model.class_scores(model.make_batch(rows, None))


# ---- residual ----------------------------------------------------------------------------------------------
def test_residual_prompt_starts_at_its_init_and_drops_out_only_while_training():
    torch.manual_seed(0)
    vectors = torch.randn(4, 16)
    prompt = ResidualPrompt(vectors, bottleneck=8, dropout=0.5)
    torch.testing.assert_close(prompt.eval()(), vectors)  # LayerNorm's gain and bias start at zero
    with torch.no_grad():
        prompt.norm.weight.fill_(1.0)
        projected = prompt.eval()()
    assert (projected - vectors).abs().max() > 0.1                        # the MLP branch now adds something
    torch.testing.assert_close(prompt.folded().embeddings, projected)
    prompt.train()
    torch.manual_seed(1)
    first = prompt()
    torch.manual_seed(2)
    assert not torch.equal(first, prompt())                                # dropout while training
    torch.testing.assert_close(prompt.folded().embeddings, projected)     # never in the folded prompt


@pytest.mark.parametrize("placement,template", [("prefix", None), ("suffix", None),
                                                (None, "[soft:2] Review: {text} [soft:3] Sentiment: {label}")],
                         ids=["prefix", "suffix", "template"])
def test_residual_prompt_saves_its_projection_and_the_file_scores_what_trained(tmp_path, tiny_llama, placement,
                                                                               template):
    config = _config(tmp_path, method="residual", residual_bottleneck=8, num_virtual_tokens=None if template else 5,
                     placement=placement, template=template)
    result = sp.train(config, backbone=tiny_llama, task=_task(), progress=False)
    trained = result.model
    assert isinstance(trained.prompt, ResidualPrompt)
    names = set(trainable_parameters(trained))
    assert {"prompt.down.weight", "prompt.up.weight", "prompt.norm.weight"} <= names  # the MLP trained
    trained.eval()
    with torch.no_grad():
        projected = trained.prompt()
    assert (projected - trained.prompt.embeddings).abs().max() > 1e-4   # not vacuous: the branch moved the prompt
    with safe_open(str(result.prompt_path), "pt") as handle:
        assert set(handle.keys()) == {"prompt_embeddings"}               # a plain prompt file, no MLP
        meta = json.loads(handle.metadata()["softprompt"])
        torch.testing.assert_close(handle.get_tensor("prompt_embeddings"), projected.cpu())
    assert meta["method"] == "prompt" and meta["num_virtual_tokens"] == 5
    loaded = load_prompted_model(result.prompt_path, tiny_llama)
    assert type(loaded.prompt) is SoftPrompt
    torch.testing.assert_close(_scores(loaded, _inputs()), _scores(trained, _inputs()))
    if placement == "prefix":  # folded: it exports to PEFT as any prefix prompt does
        assert (export_peft(result.prompt_path, tmp_path / "peft") / "adapter_model.safetensors").is_file()


# ---- DePT: sizes, rates, positions -------------------------------------------------------------------------
def test_dept_default_sizes_stay_within_a_20_token_prompt(tmp_path, tiny_llama):
    # SmolLM2-135M at the default --max-length: 10 prompt tokens and rank 8 (9 would pass the budget)
    assert dept_rank(10, 576, 128) == 8
    assert 10 * 576 + 8 * (128 + 576) <= 20 * 576 < 10 * 576 + 9 * (128 + 576)
    model = build_prompted_model(_config(tmp_path, method="dept"), tiny_llama, _task())
    d, s = tiny_llama.hidden_size, 128
    prompt = model.prompt
    assert isinstance(prompt, DecomposedPrompt) and prompt.num_virtual_tokens == 10
    assert (prompt.max_positions, prompt.rank) == (s, dept_rank(10, d, s)) and prompt.rank >= 1
    count = sum(p.numel() for p in trainable_parameters(model).values())
    assert count == 10 * d + prompt.rank * (s + d) <= 20 * d
    assert 10 * d + (prompt.rank + 1) * (s + d) > 20 * d                  # the largest rank that fits
    with pytest.raises(sp.ConfigError, match="lower --num-virtual-tokens or give --dept-rank"):
        build_prompted_model(_config(tmp_path, method="dept", num_virtual_tokens=20), tiny_llama, _task())
    explicit = build_prompted_model(_config(tmp_path, method="dept", num_virtual_tokens=4, dept_rank=3),
                                    tiny_llama, _task())
    assert (explicit.prompt.num_virtual_tokens, explicit.prompt.rank) == (4, 3)


def test_dept_trains_the_prompt_and_the_offset_at_two_learning_rates(tmp_path, tiny_llama):
    config = _config(tmp_path, method="dept", lr=0.05, dept_lr=2e-3)
    model = build_prompted_model(config, tiny_llama, _task())
    groups = _param_groups(config, list(trainable_parameters(model).items()))
    optimizer = _optimizer(config, groups)
    by_rate = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert by_rate == {0.05: {id(model.prompt.embeddings)},
                       2e-3: {id(model.prompt.offset_a), id(model.prompt.offset_b)}}
    before = {n: p.detach().clone() for n, p in model.prompt.named_parameters()}
    assert not before["offset_b"].any()                                    # starts as its plain prompt
    result = sp.train(config, backbone=tiny_llama, task=_task(), model=model, progress=False)
    after = dict(result.model.prompt.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in ("embeddings", "offset_a", "offset_b"))


def test_text_positions_skip_soft_tokens_padding_and_answers():
    soft = torch.tensor([[-1, -1, -1, 0, 1, -1, -1, 2, -1, -1]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    answer = torch.tensor([[False] * 9 + [True]])
    assert text_positions(soft, mask, answer).tolist() == [[-1, -1, 0, -1, -1, 1, 2, -1, 3, -1]]
    prompt = DecomposedPrompt(torch.zeros(3, 4), torch.randn(3, 2), torch.randn(2, 4))
    offsets = prompt.text_offsets(torch.tensor([[-1, 0, 2, 3, 40]]))      # max_positions 3
    table = prompt.offset_a @ prompt.offset_b
    torch.testing.assert_close(offsets[0, 1:3], table[[0, 2]])
    assert not offsets[0, [0, 3, 4]].any()                                 # none for -1 and past max_positions


def _trained_looking(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.prompt.offset_b.copy_(torch.randn(model.prompt.offset_b.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("template", ["[soft:3] Review: {text} Sentiment: {label}",
                                      "Review: {text} [soft:3] Sentiment: {label}",
                                      "[soft:1] Review: {text} [soft:2] Sentiment: {label}"])
def test_dept_embeddings_equal_a_hand_computed_reference(tmp_path, tiny_llama, template):
    model = _trained_looking(build_prompted_model(_config(tmp_path, method="dept", template=template,
                                                          num_virtual_tokens=None, dept_rank=2), tiny_llama, _task()))
    rows = [{"text": "great fun"}, {"text": "a dull and tedious movie with a bad plot"}]
    batch = model.make_batch(rows, None)
    with torch.no_grad():
        got = model.embed(batch)
        table = model.prompt.offset_a @ model.prompt.offset_b
        for row in range(len(rows)):
            text = 0
            for col in range(batch["input_ids"].shape[1]):
                if not batch["attention_mask"][row, col]:
                    continue                                               # left padding: not compared
                index = int(batch["soft_index"][row, col])
                if index >= 0:
                    expected = model.prompt.embeddings[index]
                else:
                    expected = tiny_llama.embed(batch["input_ids"][row, col][None])[0] + table[text]
                    text += 1
                torch.testing.assert_close(got[row, col], expected)
        # left padding shifts nothing: the short row scores the same alone and beside the long one
        torch.testing.assert_close(model.class_scores(batch)[:1], model.class_scores(model.make_batch(rows[:1], None)))


def test_dept_file_round_trip_and_every_loader_scores_what_trained(tmp_path, tiny_llama, capsys):
    config = _config(tmp_path, method="dept", placement="suffix", dept_lr=0.05)
    result = sp.train(config, backbone=tiny_llama, task=_task(), progress=False)
    trained = result.model.eval()
    assert trained.prompt.offset_b.abs().max() > 0                         # the offset is part of what is compared
    with safe_open(str(result.prompt_path), "pt") as handle:
        meta = json.loads(handle.metadata()["softprompt"])
        shapes = {name: tuple(handle.get_tensor(name).shape) for name in handle.keys()}
    d, rank = tiny_llama.hidden_size, trained.prompt.rank
    assert meta["method"] == "dept" and meta["num_virtual_tokens"] == 10
    assert shapes == {"prompt_embeddings": (10, d), "text_offset_a": (128, rank), "text_offset_b": (rank, d)}
    loaded = load_prompted_model(result.prompt_path, tiny_llama)
    assert isinstance(loaded.prompt, DecomposedPrompt)
    for name, tensor in trained.prompt.named_parameters():
        torch.testing.assert_close(getattr(loaded.prompt, name), tensor)
    expected = predict_scores(loaded, _inputs())
    torch.testing.assert_close(expected, _scores(trained, _inputs()))
    zeroed = load_prompted_model(result.prompt_path, tiny_llama)
    with torch.no_grad():
        zeroed.prompt.offset_b.zero_()
    assert (predict_scores(zeroed, _inputs()) - expected).abs().max() > 1e-4   # the offset changes the scores

    # the bank: DePT rows mixed with a plain prompt's rows in one backbone pass, each as predict scores it alone
    plain = sp.train(_config(tmp_path / "plain", num_virtual_tokens=4), backbone=tiny_llama, task=_task(),
                     progress=False)
    bank = PromptBank(tiny_llama)
    bank.add("dept", result.prompt_path)
    bank.add("plain", plain.prompt_path)
    rows = _inputs()
    got = bank.classify([(name, row) for row in rows for name in ("dept", "plain")])
    labels = list(loaded.labels)
    as_tensor = torch.tensor([[g.scores[label] for label in labels] for g in got])
    torch.testing.assert_close(as_tensor[0::2], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(as_tensor[1::2], predict_scores(load_prompted_model(plain.prompt_path, tiny_llama), rows),
                               atol=1e-4, rtol=1e-4)

    # explain's hard-prompt projection replaces the soft vectors by tokens and keeps the text offset
    hard = projected(loaded)
    assert isinstance(hard.prompt, DecomposedPrompt) and torch.equal(hard.prompt.offset_b, loaded.prompt.offset_b)
    assert not torch.equal(hard.prompt.embeddings, loaded.prompt.embeddings)

    # the command line: info describes it; PEFT export refuses it in one line (exit 2)
    assert main(["info", str(result.prompt_path)]) == 0
    assert "DePT low-rank A·B: 128 positions x rank" in capsys.readouterr().out
    assert main(["export", str(result.prompt_path), str(tmp_path / "peft")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dept prompt" in err and "low-rank offset" in err
    assert not (tmp_path / "peft").exists()
    with pytest.raises(sp.ConfigError, match="dept prompt"):
        export_peft(result.prompt_path, tmp_path / "peft")


def test_dept_generation_with_and_without_caches_agree(tmp_path, tiny_llama):
    rows = [{"text": "a great film", "target": "yes"}, {"text": "boring", "target": "no"}]
    task = TaskData("gen", rows * 2, rows, rows, None, ("text",), "target", "Q: {text} A: {target}")
    model = build_prompted_model(_config(tmp_path, method="dept", task="generation", init="vocab", dept_rank=2),
                                 tiny_llama, task)
    _trained_looking(model).eval()
    inputs = [{"text": "a great film"}, {"text": "a long, long and boring story"}]
    cached = generate(model, inputs, max_new_tokens=6)                   # the mixed-batch engine (inference.batch)
    assert cached == [generate(model, [row], max_new_tokens=6, use_cache=False)[0] for row in inputs]
    # training rows hold their targets: those are answers, not text, and get no offset
    batch = model.make_batch(rows, "target")
    answer = model.answer_columns(batch)
    assert answer.sum() == sum(len(model.encoder.answer_ids(r["target"])) + 1 for r in rows)  # + end of sequence
    positions = text_positions(batch["soft_index"], batch["attention_mask"], answer)
    assert (positions[answer] == -1).all() and (positions >= 0).any()


# ---- refusals ----------------------------------------------------------------------------------------------
def test_kinds_that_cannot_take_them_refuse_in_one_line(tmp_path):
    backbone = tiny.tiny_vision_backbone()
    images = [{"image": torch.zeros(1, 28, 28, dtype=torch.uint8), "label": str(i % 2)} for i in range(4)]
    task = TaskData("shades", images, images, images, ("0", "1"), ("image",), "label", "{image} {label}")
    for options, capability in (({"method": "dept"}, "DePT prompts (--method dept)"),
                                ({"method": "residual"}, "residual prompt tuning (--method residual)")):
        with pytest.raises(CapabilityError) as info:
            build_prompted_model(_config(tmp_path, **options), backbone, task)
        message = str(info.value)
        assert "\n" not in message and "vision" in message and capability in message


@pytest.mark.parametrize("flags,expected", [
    (["--residual-bottleneck", "8", "--method", "deep"], "--residual-bottleneck applies to --method residual"),
    (["--method", "sideways"], "--method 'sideways': choose one of prompt, residual, deep, dept, multitask"),
    (["--method", "lora"], "--method lora is a baseline, not a prompt"),
    (["--reparam", "residual"], "No such option: --reparam"),
    (["--residual-dropout", "1.5", "--method", "residual"], "--residual-dropout must be in [0, 1)"),
    (["--dept-rank", "2"], "--dept-rank applies to --method dept"),
    (["--dept-lr", "0.1"], "--dept-lr applies to --method dept"),
    (["--method", "dept", "--dept-lr", "0"], "--dept-lr must be > 0"),
    (["--method", "dept", "--gradient-checkpointing"], "--gradient-checkpointing is for --method prompt"),
    (["--method", "dept", "--num-virtual-tokens", "20"], "lower --num-virtual-tokens or give --dept-rank"),
])
def test_cli_refuses_bad_combinations_in_one_line(tmp_path, tiny_model_dir, sentiment_dir, capsys, flags, expected):
    code = main(["train", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--output", str(tmp_path / "o"),
                 "--max-steps", "1", "--precision", "fp32", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and expected in err, err


def test_cli_dept_and_residual_train_eval_predict(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    for name, flags in (("dept", ["--method", "dept", "--dept-rank", "2"]),
                        ("residual", ["--method", "residual", "--residual-bottleneck", "8"])):
        out = tmp_path / name
        assert main(["train", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--output", str(out),
                     "--max-steps", "2", "--batch-size", "4", "--eval-every", "0", "--precision", "fp32",
                     *flags]) == 0
        capsys.readouterr()
        card = (out / "README.md").read_text()                             # the run's model card says what trained
        assert {"dept": "DePT low-rank text offset (rank 2)", "residual": "through a residual MLP"}[name] in card
        prompt = str(out / "prompt.safetensors")
        assert main(["eval", "--prompt", prompt, "--model", tiny_model_dir, "--data", str(sentiment_dir),
                     "--split", "test"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == len(SENTIMENT)
        assert main(["predict", "--prompt", prompt, "--model", tiny_model_dir, "great fun"]) == 0
        assert capsys.readouterr().out.strip()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("options", [{"method": "dept", "dept_rank": 2}, {"method": "residual",
                                                                          "residual_bottleneck": 8}],
                         ids=["dept", "residual"])
def test_an_interrupted_run_resumes_to_the_same_prompt(tmp_path, tiny_model_dir, sentiment_dir, options):
    """The checkpoint holds the MLP / the offset and both optimiser groups: resuming ends where one run ends."""
    from safetensors.torch import load_file

    from softprompt.training import resume

    def config(name):
        return sp.TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), output=str(tmp_path / name), max_steps=6,
                              eval_every=2, eval_limit=0, batch_size=4, lr=3e-2, precision="fp32", device="cpu",
                              checkpoint_every=2, **options)

    reference = sp.train(config("reference"), progress=False)

    def stop_at_4(step, _result):
        if step == 4:
            raise _Stop

    with pytest.raises(_Stop):
        sp.train(config("stopped"), progress=False, on_validation=stop_at_4)
    result = resume(tmp_path / "stopped", progress=False)
    assert result.steps == 6
    got, expected = load_file(result.prompt_path), load_file(reference.prompt_path)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)


def test_a_dept_file_whose_shapes_do_not_fit_is_refused(tmp_path, tiny_llama):
    from safetensors.torch import save_file

    from softprompt.errors import PromptFileError

    model = build_prompted_model(_config(tmp_path, method="dept", dept_rank=2), tiny_llama, _task())
    path = sp.save_prompt(tmp_path / "good.safetensors", model)
    with safe_open(str(path), "pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    assert isinstance(load_prompted_model(path, tiny_llama).prompt, DecomposedPrompt)
    for name, bad in (("text_offset_b", torch.zeros(3, tiny_llama.hidden_size)),   # rank 3 against A's 2
                      ("text_offset_b", torch.zeros(2, 7)),                        # not the prompt's width
                      ("text_offset_a", torch.zeros(128))):                        # not a matrix
        crafted = tmp_path / "crafted.safetensors"
        save_file({**tensors, name: bad}, str(crafted), metadata=header)
        with pytest.raises(PromptFileError) as info:
            load_prompted_model(crafted, tiny_llama)
        assert "\n" not in str(info.value) and name in str(info.value)
    plain = tmp_path / "plain.safetensors"  # stray DePT-named tensors in a plain prompt's file are not read
    save_file({"prompt_embeddings": tensors["prompt_embeddings"], "text_offset_a": torch.zeros(3),
               "text_offset_b": torch.zeros(1)}, str(plain),
              metadata={**header, "softprompt": header["softprompt"].replace('"method": "dept"', '"method": "prompt"')})
    assert type(load_prompted_model(plain, tiny_llama).prompt) is SoftPrompt


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("template", [None, "[soft:1] Review: {text} [soft:2] Sentiment: {label}"])
def test_dept_prompt_served_from_its_cached_prefix_scores_as_whole_rows(tmp_path, tiny_llama, template, bos):
    """A leading DePT prompt's keys/values are cached like a plain prompt's; the text after the cache takes the
    offsets of its positions in the whole row (a BOS inside the cache is text position 0)."""
    options = {"template": template, "num_virtual_tokens": None} if template else {}
    model = _trained_looking(build_prompted_model(_config(tmp_path, method="dept", dept_rank=2, **options),
                                                  tiny_llama, _task())).eval()
    if bos:  # as a tokenizer that starts every text with BOS (Gemma's) encodes rows
        model.encoder.bos = [tiny_llama.tokenizer.bos_token_id]
    assert model.cache_plan()[0] > 0 and model.cached_text_columns == int(bos)
    rows = _inputs() + [{"text": "a dull and tedious movie with a bad plot, too long by an hour"}]
    cached = _scores(model, rows)
    model.use_prompt_cache = False
    whole = _scores(model, rows)                                          # the training path's whole rows
    model.use_prompt_cache = True
    torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)
    zeroed = build_prompted_model(_config(tmp_path, method="dept", dept_rank=2, **options), tiny_llama, _task())
    zeroed.eval()
    zeroed.encoder.bos = model.encoder.bos
    with torch.no_grad():
        zeroed.prompt.embeddings.copy_(model.prompt.embeddings)           # same prompt, no offset
    assert (_scores(zeroed, rows) - cached).abs().max() > 1e-4           # the offsets still act after the cache
    bank = PromptBank(tiny_llama)
    bank.add("dept", model)
    got = bank.classify([("dept", row) for row in rows])                   # the server's batch path
    as_tensor = torch.tensor([[g.scores[label] for label in model.labels] for g in got])
    torch.testing.assert_close(as_tensor, whole, atol=1e-4, rtol=1e-4)
