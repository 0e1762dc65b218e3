"""Memory-side features for bigger backbones: --dry-run estimates, gradient checkpointing, fp16, --load-in."""

import pytest
import tiny
import torch

from softprompt import TrainConfig, load_task, train
from softprompt.cli import main
from softprompt.errors import SoftPromptError
from softprompt.kinds.table import build_prompted_model
from softprompt.tools.memory import estimate_training_memory, saved_activation_bytes


def test_dry_run_counts_what_a_real_forward_keeps(tiny_model_dir, sentiment_dir):
    from softprompt import load_backbone

    config = TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), batch_size=3, max_length=24,
                         num_virtual_tokens=5, precision="fp32", device="cpu")
    estimate = estimate_training_memory(config)
    real = load_backbone(tiny_model_dir, dtype=torch.float32)
    by_name = {name: count for name, count, _ in estimate.rows}
    assert estimate.batch_tokens == (3, 29)
    assert by_name["activations"] == saved_activation_bytes(real.model, 3, 29, torch.float32, device="cpu")
    assert by_name["backbone weights"] == 4 * sum(p.numel() for p in real.model.parameters())
    assert by_name["prompt + grad + AdamW"] == 16 * 5 * real.hidden_size
    checkpointed = {n: c for n, c, _ in estimate_training_memory(config.replace(gradient_checkpointing=True)).rows}
    assert checkpointed["activations (layer inputs)"] < by_name["activations"] / 3
    assert estimate.total == sum(by_name.values())
    layers = sum(p.numel() for p in real.model.model.layers.parameters()) * 4  # tied embedding: not split
    assert estimate.shardable == layers and estimate.unit == layers // 2  # two layers, one unit each
    assert estimate.sharded_total(2) == estimate.total - layers // 2 + layers  # half split away, two units whole
    # without --num-virtual-tokens a row holds the method's own default count (DePT: 10)
    assert estimate_training_memory(config.replace(num_virtual_tokens=None, method="dept")).batch_tokens == (3, 34)
    assert estimate_training_memory(config.replace(num_virtual_tokens=None)).batch_tokens == (3, 44)


def test_dry_run_cli_loads_nothing_and_prints_the_table(tiny_model_dir, sentiment_dir, capsys, monkeypatch):
    import softprompt.cli.common  # noqa: F401  (imported now, it binds the real loader, not the patch below)
    import softprompt.hub as registry

    monkeypatch.setattr(registry, "load_backbone", lambda *a, **k: pytest.fail("--dry-run loaded weights"))
    assert main(["train", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--dry-run",
                 "--gradient-checkpointing", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "nothing loaded" in out and "activations (layer inputs)" in out and "data parallel over N processes" in out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_prompt_gradient_with_less_kept(arch, sentiment_dir):
    task = load_task(str(sentiment_dir))
    config = TrainConfig(model="unused", data=str(sentiment_dir), num_virtual_tokens=4, precision="fp32")
    grads = []
    for checkpointing in (False, True):
        backbone = tiny.tiny_backbone(arch)
        if checkpointing:
            assert backbone.enable_gradient_checkpointing() == len(backbone.decoder_layers())
        model = build_prompted_model(config, backbone, task)
        loss, _ = model.loss(model.make_batch(task.train[:6]))
        loss.backward()
        grads.append(model.prompt.embeddings.grad.clone())
        with torch.no_grad():  # inference is untouched by the wrapper
            model.class_scores(model.make_batch(task.test[:2], label_field=None))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_and_fp16_train_end_to_end(tmp_path, tiny_model_dir, sentiment_dir):
    from softprompt.training.checkpoint import load_checkpoint

    base = dict(model=tiny_model_dir, data=str(sentiment_dir), max_steps=4, eval_every=0, batch_size=4,
                device="cpu", checkpoint_every=2, lr=3e-2)
    plain = train(TrainConfig(**base, precision="fp32", output=str(tmp_path / "plain")), progress=False)
    ckpt = train(TrainConfig(**base, precision="fp32", gradient_checkpointing=True, output=str(tmp_path / "ck")),
                 progress=False)
    torch.testing.assert_close(ckpt.model.prompt.embeddings, plain.model.prompt.embeddings, atol=1e-5, rtol=1e-4)
    half = train(TrainConfig(**base, precision="fp16", output=str(tmp_path / "fp16")), progress=False)
    assert half.model.backbone.dtype == torch.float16 and half.model.prompt.embeddings.dtype == torch.float32
    assert torch.isfinite(half.model.prompt.embeddings).all()
    assert not torch.equal(half.model.prompt.embeddings, build_prompted_model(
        TrainConfig(**base, precision="fp16", output="x"), half.model.backbone, load_task(str(sentiment_dir))
    ).prompt.embeddings)  # it trained
    assert "scaler" in load_checkpoint(tmp_path / "fp16")  # the loss scale is part of the run state


def test_quantised_loading_explains_what_it_needs(tiny_model_dir):
    from softprompt.kinds.loading import quantization_config

    with pytest.raises(SoftPromptError, match="bitsandbytes|CUDA GPU"):
        quantization_config("4bit", torch.bfloat16, "cpu")
    with pytest.raises(SoftPromptError, match="choose int8, 8bit, 4bit"):
        TrainConfig(data="x", load_in="3bit")
    with pytest.raises(SoftPromptError, match="method prompt"):
        TrainConfig(data="x", method="deep", gradient_checkpointing=True)


def test_dry_run_for_a_gpu_counts_fused_attention_as_a_real_sdpa_forward_keeps(tiny_model_dir, sentiment_dir):
    from transformers import AutoModelForCausalLM

    config = TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), batch_size=2, max_length=60,
                         num_virtual_tokens=4, precision="fp32", device="cuda")  # estimated, not run, on a GPU
    estimate = {n: c for n, c, _ in estimate_training_memory(config).rows}["activations"]
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").requires_grad_(False)
    real = saved_activation_bytes(sdpa, 2, 64, torch.float32, device="cpu")  # CPU's fused SDPA kernel
    eager = {n: c for n, c, _ in estimate_training_memory(config.replace(device="cpu")).rows}["activations"]
    assert real < eager  # no T x T scores kept
    assert abs(estimate - real) / real < 0.1, (estimate, real, eager)
    print(f"fused estimate {estimate}, real sdpa {real}, eager {eager}")


def test_long_sequences_switch_to_sdpa_with_the_same_result(monkeypatch):
    """A CPU backbone loaded with eager attention runs SDPA from SDPA_FROM_KEYS attended positions on; both give
    the same hidden states (padding masked), so the switch changes speed and memory, not results."""
    import transformers.models.llama.modeling_llama as llama

    import softprompt.kinds.causal_lm.backbone as module

    model = tiny.tiny_model("llama")
    model.config._attn_implementation = "eager"
    backbone = module.CausalLMBackbone(model, tiny.tiny_tokenizer(), "tiny-llama")
    assert backbone.attention_by_length
    ids = torch.randint(5, 300, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    used = []
    eager = llama.eager_attention_forward
    monkeypatch.setattr(llama, "eager_attention_forward", lambda *a, **k: used.append("eager") or eager(*a, **k))
    short, _ = backbone.hidden_states(backbone.embed(ids), mask, positions)
    assert used and model.config._attn_implementation == "eager"
    used.clear()
    monkeypatch.setattr(module, "SDPA_FROM_KEYS", 32)  # 40 positions are now "long"
    kernels = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        kernels.append((kwargs.get("attn_mask") is None, kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    embeds = backbone.embed(ids).detach().requires_grad_()
    long, _ = backbone.hidden_states(embeds, mask, positions)
    assert not used and model.config._attn_implementation == "sdpa"
    # A training pass right-pads its rows so the kernel runs causal without a mask (no padded row needs one).
    assert kernels == [(True, True)] * model.config.num_hidden_layers
    torch.testing.assert_close(long[0, 7:], short[0, 7:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long[1], short[1], atol=1e-5, rtol=1e-4)
    # Gradients reach the real tokens' inputs as through the masked eager pass.
    weights = torch.randn_like(long)
    weights[0, :7] = 0  # pads' outputs are never read
    (long * weights).sum().backward()
    grad_long = embeds.grad.clone()
    embeds.grad = None
    monkeypatch.setattr(module, "SDPA_FROM_KEYS", 4096)
    short, _ = backbone.hidden_states(embeds, mask, positions)
    (short * weights).sum().backward()
    torch.testing.assert_close(grad_long[0, 7:], embeds.grad[0, 7:], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(grad_long[1], embeds.grad[1], atol=1e-4, rtol=1e-3)
    kernels.clear()
    with torch.no_grad():  # without gradients (serving: cached prefixes, generation) the mask stays
        backbone.hidden_states(embeds, mask, positions)
    assert kernels and not any(unmasked for unmasked, _ in kernels)


def test_int8_backbone_holds_linear_weights_in_int8_and_a_prompt_trains_on_it(tiny_model_dir, sentiment_dir,
                                                                                tmp_path, capsys):
    from softprompt import load_backbone
    from softprompt.kinds.table import load_prompted_model
    from softprompt.kinds.int8 import Int8Linear

    full = load_backbone(tiny_model_dir, dtype=torch.float32)
    held = load_backbone(tiny_model_dir, dtype=torch.float32, load_in="int8")
    linears = [m for m in full.model.modules() if isinstance(m, torch.nn.Linear)]
    quantised = [m for m in held.model.modules() if isinstance(m, Int8Linear)]
    assert len(quantised) == len(linears) - 1 and isinstance(held.model.lm_head, torch.nn.Linear)
    assert quantised[0].qweight.dtype == torch.int8 and not list(quantised[0].parameters())  # no float weight
    # Each weight is within half a step of its group's scale of the checkpoint's (loaded as stored: no other
    # rounding), and the model's other weights are in the dtype asked for.
    layer = full.model.model.layers[0].mlp.up_proj.weight
    up = held.model.model.layers[0].mlp.up_proj
    assert up.weight.dtype == torch.float32 and held.model.model.norm.weight.dtype == torch.float32
    step = up.scale.repeat_interleave(up.group_size, dim=1)                       # each weight's group's scale
    assert up.scale.shape == (up.out_features, up.in_features // up.group_size)
    assert ((up.weight - layer).abs() <= step / 2 * (1 + 1e-6)).all()
    assert not torch.equal(up.weight, layer)
    # The fingerprint names the checkpoint: a prompt trained on either loads on the other.
    assert held.fingerprint() == full.fingerprint()

    config = TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), output=str(tmp_path / "int8"), max_steps=4,
                         batch_size=4, num_virtual_tokens=4, precision="fp32", load_in="int8", eval_every=0,
                         compile="off")
    result = train(config, progress=False)
    assert isinstance(result.model.backbone.model.model.layers[0].mlp.up_proj, Int8Linear)
    start = build_prompted_model(config, full, load_task(str(sentiment_dir))).prompt.embeddings
    assert not torch.equal(result.model.prompt.embeddings.detach(), start.detach())  # the gradient got through

    # Scores on the int8 backbone stay within int8's rounding of the fp32 backbone's, and are not identical.
    on_full, on_held = (load_prompted_model(result.prompt_path, b) for b in (full, held))
    rows = [{"text": t} for t in ("a great film with a fine cast", "boring and bad", "warm, funny and moving")]
    with torch.no_grad():
        a, b = (m.class_scores({k: v for k, v in m.make_batch(rows, label_field=None).items()})
                for m in (on_full, on_held))
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()

    # The gradient an int8 layer passes back is the one its dequantised weight would.
    x = torch.randn(3, up.in_features, requires_grad=True)
    (up(x) ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ((x2 @ up.weight.t()) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)

    assert main(["eval", "--prompt", str(result.prompt_path), "--data", str(sentiment_dir), "--load-in", "int8",
                 "--quiet"]) == 0
    assert main(["predict", "--prompt", str(result.prompt_path), "--load-in", "int4", "x"]) == 2
    assert "--load-in 'int4': choose int8, 8bit, 4bit" in capsys.readouterr().err


def test_int8_memory_estimate_counts_a_byte_per_linear_weight(tiny_model_dir, sentiment_dir):
    from softprompt import load_backbone

    config = TrainConfig(model=tiny_model_dir, data=str(sentiment_dir), precision="fp32", device="cpu")
    fp32 = {n: c for n, c, _ in estimate_training_memory(config).rows}["backbone weights"]
    int8 = {n: c for n, c, _ in estimate_training_memory(config.replace(load_in="int8")).rows}["backbone weights"]
    model = load_backbone(tiny_model_dir, dtype=torch.float32).model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    # 4 bytes -> 1 for every linear weight but the output head, plus a 4-byte scale per group of 128 input columns
    # (one per row where 128 does not divide the width: every layer of the tiny model)
    groups = [m.in_features // 128 if m.in_features % 128 == 0 else 1 for m in linears]
    assert fp32 - int8 == sum(3 * m.weight.numel() - 4 * m.out_features * g for m, g in zip(linears, groups))


def test_int8_groups_keep_a_large_weight_from_coarsening_its_whole_row():
    from softprompt.kinds.int8 import GROUP_SIZE, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(2 * GROUP_SIZE, 3)
    with torch.no_grad():
        linear.weight[:, 0] = 50.0  # one outlier column in the first group
    held = Int8Linear(linear)
    assert held.group_size == GROUP_SIZE and held.scale.shape == (3, 2)
    error = (held.weight - linear.weight).abs()
    # the second group's step is its own (weights ~0.06), not the outlier's 50/127
    assert error[:, GROUP_SIZE:].max() <= held.scale[:, 1:].max() / 2 < 50 / 127 / 100
    assert error[:, :GROUP_SIZE].max() <= held.scale[:, :1].max() / 2 + 1e-6
    x = torch.randn(4, 2 * GROUP_SIZE, requires_grad=True)
    torch.testing.assert_close(held(x), x @ held.weight.t() + linear.bias, rtol=1e-5, atol=1e-5)
    assert Int8Linear(torch.nn.Linear(100, 2)).scale.shape == (2, 1)  # 128 does not divide 100: one per row


def test_dry_run_on_a_kind_without_estimates_is_refused_in_one_line(tmp_path, capsys):
    folder = tiny.save_tiny_encoder(tmp_path / "bert", "bert")
    code = main(["train", "--model", folder, "--data", "rotten_tomatoes", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (the tiny model's save may print above it)
    assert code == 2 and err.startswith("softprompt: error: --model")
    assert "does not support memory estimates before loading (train --dry-run)" in err and "encoder" in err, err
