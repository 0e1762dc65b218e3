"""Tiny random-weight backbones and a tiny byte-level BPE tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "a great film with a fine cast", "a dull and tedious movie", "the plot is thin but the acting is good",
    "an awful waste of time", "warm, funny and moving", "review sentiment positive negative label text",
    "business sport politics tech entertainment", "the quick brown fox jumps over the lazy dog",
    "Review: Sentiment: Topic: Article: Question: Answer:", "great good bad terrible fun boring",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    return tok.to_str()


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_model(arch: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if arch in ("llama", "llama-untied"):
        config = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             tie_word_embeddings=arch == "llama", initializer_range=0.2)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_backbone(arch: str = "llama", seed: int = 0):
    from softprompt.kinds.causal_lm.backbone import CausalLMBackbone

    return CausalLMBackbone(tiny_model(arch, seed), tiny_tokenizer(), name=f"tiny-{arch}")


def save_tiny(folder, arch: str = "llama", seed: int = 0) -> str:
    tiny_model(arch, seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def tiny_encoder_tokenizer():
    """The tiny BPE vocabulary with the special tokens an encoder needs ([CLS]/[SEP] as <s>/</s>, a mask)."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"})
    return tok


def tiny_encoder_model(arch: str = "bert-mlm", seed: int = 0):
    """Tiny random BERT (bare: `bert`, with its masked-LM head: `bert-mlm`), T5 or BART."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, BartConfig, BertConfig, T5Config

    torch.manual_seed(seed)
    if arch in ("bert", "bert-mlm"):
        config = BertConfig(vocab_size=410, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=256, pad_token_id=0,
                            initializer_range=0.2)
        return (AutoModelForMaskedLM if arch == "bert-mlm" else AutoModel).from_config(config).eval()
    if arch == "t5":
        config = T5Config(vocab_size=410, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, initializer_factor=1.0)
    elif arch == "bart":
        config = BartConfig(vocab_size=410, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            decoder_start_token_id=2, forced_eos_token_id=None, init_std=0.2)
    else:
        raise ValueError(arch)
    return AutoModelForSeq2SeqLM.from_config(config).eval()


def tiny_encoder_backbone(arch: str = "bert-mlm", seed: int = 0):
    from softprompt.kinds.encoder.backbone import EncoderBackbone, Seq2SeqBackbone

    wrapper = Seq2SeqBackbone if arch in ("t5", "bart") else EncoderBackbone
    return wrapper(tiny_encoder_model(arch, seed), tiny_encoder_tokenizer(), name=f"tiny-{arch}")


def save_tiny_encoder(folder, arch: str = "bert-mlm", seed: int = 0) -> str:
    tiny_encoder_model(arch, seed).save_pretrained(folder)
    tiny_encoder_tokenizer().save_pretrained(folder)
    return str(folder)


def tiny_vit(seed: int = 0, image_size: int = 28, patch_size: int = 7, channels: int = 1):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=channels, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return ViTModel(config, add_pooling_layer=False).eval()


def tiny_vision_backbone(seed: int = 0):
    from softprompt.kinds.vision.backbone import VisionBackbone

    return VisionBackbone(tiny_vit(seed), name="tiny-vit", image_mean=(0.5,), image_std=(0.5,))


def tiny_speech_backbone():
    """A tiny random Whisper (8 mel bins, 1 s windows) on the tiny vocabulary."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from softprompt.kinds.speech.backbone import SpeechBackbone

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|notimestamps|>"]})
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           max_source_positions=50, max_target_positions=64, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=sot, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=sot,
                           suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(config).eval()
    extractor = WhisperFeatureExtractor(feature_size=8, chunk_length=1)  # 1 s windows: 100 frames -> 50 positions
    return SpeechBackbone(model, tokenizer, extractor, name="tiny-whisper")


# ---- tiny prompted models and a training config --------------------------------------------------------------
def classifier(backbone, placement, n, seed, words=()):
    """A sentiment classifier: a random `n`-token prompt (seeded) on `backbone`."""
    from softprompt import PromptedModel, SoftPrompt, Verbalizer, build_template

    torch.manual_seed(seed)
    template = build_template("Review: {text} Sentiment: {label}", placement, n)
    return PromptedModel(backbone, SoftPrompt(torch.randn(n, backbone.hidden_size) * 0.4), template,
                         Verbalizer.from_spec(["negative", "positive"], list(words)), max_length=64)


def generator(backbone, n, seed):
    """A question-answering generator: a random `n`-token prefix prompt (seeded) on `backbone`."""
    from softprompt import PromptedModel, SoftPrompt, build_template

    torch.manual_seed(seed)
    return PromptedModel(backbone, SoftPrompt(torch.randn(n, backbone.hidden_size) * 0.5),
                         build_template("Q: {text}\nA: {target}", "prefix", n), None, max_length=64)


def qa_model(backbone, placement="prefix"):
    """A question-answering generator with a 4-token prompt (seed 0) in `placement`."""
    from softprompt import PromptedModel, SoftPrompt, build_template

    torch.manual_seed(0)
    template = build_template("Q: {text}\nA: {target}", placement, 4)
    return PromptedModel(backbone, SoftPrompt(torch.randn(4, backbone.hidden_size) * 0.5), template, None,
                         max_length=64)


def train_config(tmp_path, data_dir, model_dir, **kw):
    """A short fp32 CPU training run on `data_dir` into tmp_path/run; `kw` overrides."""
    from softprompt import TrainConfig

    base = dict(model=model_dir, data=str(data_dir), output=str(tmp_path / "run"), max_steps=12, eval_every=4,
                batch_size=8, lr=0.1, precision="fp32", device="cpu")
    base.update(kw)
    return TrainConfig(**base)

