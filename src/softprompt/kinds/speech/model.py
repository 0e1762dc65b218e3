"""Prompt tuning for a frozen Whisper: soft tokens on the decoder input (and optionally on the encoder output).

- Decoder prompt (`decoder_tokens` = n): the decoder reads `<|startoftranscript|><|notimestamps|> [soft:n]` and
  then the answer; each class is scored by the log-likelihood of its label word as the decoder's continuation
  (teacher-forced, any number of tokens: the sum of their log-probabilities), as `Seq2SeqPromptedModel` does
  for T5.
- Encoder prompt (`encoder_tokens` = m, optional): m trained vectors appended to the encoder's output states, so
  every cross-attention also sees them. The encoder itself never needs gradients (its input is audio).

Both live in one `SoftPrompt` of n + m rows (decoder rows first): the prompt file stores it as
`prompt_embeddings`, with the split, the label words and the input field in the `speech` metadata.
Rows are `{"audio": 1-D float tensor at 16 kHz, "label": "yes"}`; a row may carry precomputed
`encoder_states` (S, d) instead (the encoder is frozen, so a benchmark can encode every clip once).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ...config import TrainConfig
from ...data import TaskData
from ...errors import ConfigError
from ...prompts import VOCAB_SAMPLE_TOP, SoftPrompt
from ...scoring import backbone_autocast, token_log_likelihood
from ..classifier import InputSpec, PromptedClassifier


def default_label_word(label: str) -> str:
    """How Whisper writes a one-word utterance: a leading space and a capital (" Yes")."""
    text = str(label).strip()
    return " " + text[:1].upper() + text[1:]


class SpeechPromptedModel(PromptedClassifier):
    """Frozen Whisper + decoder (and encoder) soft prompt; classes scored by label-word log-likelihood.

    Examples:
        >>> prompt = SpeechPromptedModel.initial_prompt(backbone, 8, encoder_tokens=4)               # doctest: +SKIP
        >>> model = SpeechPromptedModel(backbone, prompt, ["yes", "no"], encoder_tokens=4)            # doctest: +SKIP
        >>> model.classify([waveform_16khz])                                                          # doctest: +SKIP
        ['yes']
    """

    def __init__(self, backbone: Any, prompt: SoftPrompt, labels: Sequence[str], *, encoder_tokens: int = 0,
                 label_words: Mapping[str, str] | None = None, field: str = "audio") -> None:
        total = prompt.num_virtual_tokens
        if not 0 <= encoder_tokens <= total:
            raise ConfigError(f"encoder_tokens={encoder_tokens} but the prompt has {total} rows")
        if prompt.hidden_size != backbone.hidden_size:
            raise ConfigError(f"prompt hidden size {prompt.hidden_size} != backbone hidden size {backbone.hidden_size}")
        self.encoder_tokens = int(encoder_tokens)
        self.decoder_tokens = total - self.encoder_tokens
        tok = backbone.tokenizer
        prefix = "".join(tok.convert_ids_to_tokens(backbone.decoder_prefix_ids))
        spec = InputSpec(f"{{{field}}} [soft:{self.encoder_tokens}] | {prefix} [soft:{self.decoder_tokens}] {{label}}",
                         (field,), total)
        super().__init__(backbone, prompt, spec, labels)
        words = dict(label_words or {})
        self.label_words = {label: words.get(label, default_label_word(label)) for label in self.labels}
        self.word_ids: list[list[int]] = [tok.encode(self.label_words[label], add_special_tokens=False)
                                          for label in self.labels]
        for label, ids in zip(self.labels, self.word_ids):
            if not ids:
                raise ConfigError(f"label word {self.label_words[label]!r} of label {label!r} has no tokens")
        self.register_buffer("prefix_ids", torch.tensor(backbone.decoder_prefix_ids, dtype=torch.long),
                             persistent=False)
        self.prefix_ids = self.prefix_ids.to(backbone.device)

    @staticmethod
    def initial_prompt(backbone: Any, decoder_tokens: int, *, encoder_tokens: int = 0,
                       generator: torch.Generator | None = None) -> SoftPrompt:
        """Decoder rows: embeddings of frequent vocabulary tokens. Encoder rows: the frozen encoder's own states
        for one second of silence (evenly spaced), vectors it already produces and the decoder already reads."""
        table = backbone.input_embedding_matrix().detach()
        ids = torch.randint(0, min(VOCAB_SAMPLE_TOP, table.shape[0]), (decoder_tokens,), generator=generator)
        rows = [table[ids.to(table.device)].float().cpu()]
        if encoder_tokens:
            with torch.no_grad():
                states = backbone.encode(backbone.features([torch.zeros(backbone.sample_rate)]))[0].float().cpu()
            picks = torch.linspace(0, states.shape[0] // 30 - 1, encoder_tokens).round().long()  # within the 1 s
            rows.append(states[picks])
        return SoftPrompt(torch.cat(rows).to(backbone.device))

    @property
    def field(self) -> str:
        return self.spec.input_fields[0]

    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if rows and "encoder_states" in rows[0]:
            return {"encoder_states": torch.stack([torch.as_tensor(r["encoder_states"]) for r in rows])}
        return {"input_features": self.backbone.features([r[self.field] for r in rows])}

    def encoder_states(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, S + m, d): the frozen encoder's states (no gradients), then the encoder prompt's m vectors."""
        backbone = self.backbone
        if "encoder_states" in batch:
            states = batch["encoder_states"].to(backbone.device, backbone.dtype)
        else:
            with torch.no_grad(), backbone_autocast(backbone):
                states = backbone.encode(batch["input_features"])
        if not self.encoder_tokens:
            return states
        extra = self.prompt()[self.decoder_tokens:].to(states.dtype)
        return torch.cat([states, extra.unsqueeze(0).expand(states.shape[0], -1, -1)], dim=1)

    def _decoder_prefix(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """(rows, 2 + n, d): the start/task tokens' embeddings, then the decoder prompt."""
        start = self.backbone.embed(self.prefix_ids)
        prompt = self.prompt()[:self.decoder_tokens].to(start.dtype)
        return torch.cat([start, prompt]).to(dtype).unsqueeze(0).expand(rows, -1, -1)

    def word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, W) fp32: log-likelihood of every label word as the decoder's continuation of the prompt."""
        backbone = self.backbone
        with backbone_autocast(backbone):
            states = self.encoder_states(batch)
            rows = states.shape[0]
            prefix = self._decoder_prefix(rows, states.dtype)
            logits = backbone.decoder_logits(prefix, states)[:, -1]                         # (B, V)
            first = torch.tensor([ids[0] for ids in self.word_ids], device=logits.device)
            scores = torch.log_softmax(logits.float(), dim=-1)[:, first]                  # (B, W)
            longer = [w for w, ids in enumerate(self.word_ids) if len(ids) > 1]
            if not longer:
                return scores
            # Words of several tokens: teacher-force the rest of each word after the shared prefix.
            k = max(len(self.word_ids[w]) for w in longer) - 1
            inputs = torch.full((len(longer), k), backbone.eos_token_id, dtype=torch.long)
            targets = torch.full((len(longer), k), -1, dtype=torch.long)
            for row, w in enumerate(longer):
                ids = self.word_ids[w]
                inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
                targets[row, :len(ids) - 1] = torch.tensor(ids[1:])
            inputs, targets = inputs.to(states.device), targets.to(states.device)
            words = len(longer)
            embeds = torch.cat([prefix.repeat_interleave(words, dim=0),
                                backbone.embed(inputs).to(prefix.dtype).repeat(rows, 1, 1)], dim=1)  # (B*W', 2+n+k, d)
            rest = backbone.decoder_logits(embeds, states.repeat_interleave(words, dim=0))[:, -k:]
        log_probs = torch.log_softmax(rest.float(), dim=-1).view(rows, words, k, -1)
        extra = token_log_likelihood(log_probs, targets)                                  # (B, W')
        index = torch.tensor(longer, device=scores.device)
        return scores.index_add(1, index, extra)

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.word_scores(batch)

    def file_metadata(self) -> dict[str, Any]:
        return {**super().file_metadata(), "speech": {"decoder_tokens": self.decoder_tokens, "encoder_tokens": self.encoder_tokens,
                           "label_words": dict(self.label_words), "field": self.field,
                           "decoder_prefix_ids": list(self.backbone.decoder_prefix_ids),
                           "sample_rate": self.backbone.sample_rate}}


def speech_model_from_file(backbone: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                           ) -> SpeechPromptedModel:
    """Rebuild a `SpeechPromptedModel` from a prompt file's tensors and metadata."""
    speech = meta.get("speech") or {}
    return SpeechPromptedModel(backbone, SoftPrompt(tensors["prompt_embeddings"].to(backbone.device)), meta["labels"],
                               encoder_tokens=int(speech.get("encoder_tokens", 0)),
                               label_words=speech.get("label_words"), field=speech.get("field", "audio"))


def build_speech_model(config: TrainConfig, backbone: Any, task: TaskData) -> SpeechPromptedModel:
    """The model `softprompt train` builds for a speech backbone: `--num-virtual-tokens` decoder tokens (default
    10) and `encoder_prompt_tokens` encoder tokens (default 0), label words from the labels."""
    if task.labels is None:
        raise ConfigError("a speech backbone classifies here: give an audio classification dataset")
    encoder_tokens = config.whisper.encoder_prompt_tokens
    generator = torch.Generator().manual_seed(config.seed)
    prompt = SpeechPromptedModel.initial_prompt(backbone, config.num_virtual_tokens or 10,
                                                encoder_tokens=encoder_tokens, generator=generator)
    torch.manual_seed(config.seed)
    return SpeechPromptedModel(backbone, prompt, task.labels, encoder_tokens=encoder_tokens,
                               field=task.text_fields[0])


__all__ = ["SpeechPromptedModel", "build_speech_model", "default_label_word", "speech_model_from_file"]
