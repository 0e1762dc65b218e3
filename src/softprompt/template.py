"""Placement of soft tokens: prefix, suffix or an interleaved template -> token ids + an index plan.

A template is text with input fields `{text}`, soft-token runs `[soft:N]` and one answer marker at the end,
`{label}` (classification) or `{target}` (generation):

    "[soft:8] Review: {text} [soft:4] Sentiment: {label}"

Encoding an example gives `input_ids` (soft positions hold the pad id) and `soft_index` (-1 for real tokens,
else which virtual token goes there). Batches are left-padded, so every row ends at its answer position and
padding never lands between the prompt and the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

import torch

from .errors import ConfigError

ANSWER_FIELDS = ("label", "target")
_TOKEN_RE = re.compile(r"\[soft:(\d+)\]|\{(\w+)\}")


class Placement(str, Enum):
    PREFIX = "prefix"      # soft tokens before everything
    SUFFIX = "suffix"      # soft tokens right after the last input field
    TEMPLATE = "template"  # soft tokens where the template's [soft:N] markers say


@dataclass(frozen=True)
class Segment:
    kind: str         # "text" | "field" | "soft"
    value: str = ""   # literal text or field name
    length: int = 0   # soft: number of virtual tokens
    offset: int = 0   # soft: index of its first virtual token in the prompt


@dataclass(frozen=True)
class Template:
    source: str
    segments: tuple[Segment, ...]  # everything before the answer
    answer_field: str
    answer_space: str              # whitespace between the last literal and the answer; joins the answer words

    @classmethod
    def parse(cls, source: str) -> "Template":
        """Parse a template string; errors name `--template` and what to change."""
        segments: list[Segment] = []
        answer: str | None = None
        pos, offset = 0, 0
        for match in _TOKEN_RE.finditer(source):
            if answer is not None:
                raise ConfigError(f"--template {source!r}: '{{{answer}}}' must come last (nothing may follow it)")
            if match.start() > pos:
                segments.append(Segment("text", source[pos:match.start()]))
            if match.group(1) is not None:
                length = int(match.group(1))
                if length < 1:
                    raise ConfigError(f"--template {source!r}: [soft:N] needs N >= 1")
                segments.append(Segment("soft", length=length, offset=offset))
                offset += length
            elif match.group(2) in ANSWER_FIELDS:
                answer = match.group(2)
            else:
                segments.append(Segment("field", match.group(2)))
            pos = match.end()
        if answer is None:
            raise ConfigError(f"--template {source!r}: add the answer marker '{{label}}' (or '{{target}}') at the end")
        if source[pos:].strip():
            raise ConfigError(f"--template {source!r}: text after '{{{answer}}}' is not allowed")
        if not any(s.kind == "field" for s in segments):
            raise ConfigError(f"--template {source!r}: no input field; add e.g. '{{text}}'")
        answer_space = ""
        if segments and segments[-1].kind == "text":
            stripped = segments[-1].value.rstrip(" ")
            answer_space = segments[-1].value[len(stripped):]
            segments[-1] = Segment("text", stripped)
            if not stripped:
                segments.pop()
        return cls(source, tuple(segments), answer, answer_space)

    @property
    def num_virtual_tokens(self) -> int:
        return sum(s.length for s in self.segments if s.kind == "soft")

    @property
    def input_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.value for s in self.segments if s.kind == "field"))


def build_template(body: str, placement: Placement | str, num_virtual_tokens: int | None) -> Template:
    """Combine a template body with a placement.

    `prefix`/`suffix` insert `[soft:num_virtual_tokens]` into a body without soft markers; `template` takes the
    markers from the body itself (and `num_virtual_tokens`, if given, must match their total).
    """
    placement = Placement(placement)
    has_soft = "[soft:" in body
    if placement is Placement.TEMPLATE or has_soft:
        if placement is not Placement.TEMPLATE:
            raise ConfigError(f"--template has [soft:N] markers but --placement is {placement.value}; "
                              f"use --placement template (or drop the markers)")
        template = Template.parse(body)
        if template.num_virtual_tokens == 0:
            raise ConfigError("--placement template needs [soft:N] markers in --template")
        if num_virtual_tokens is not None and num_virtual_tokens != template.num_virtual_tokens:
            raise ConfigError(f"--num-virtual-tokens {num_virtual_tokens} disagrees with the template's "
                              f"[soft:N] markers (total {template.num_virtual_tokens}); drop one of them")
        return template
    if not num_virtual_tokens or num_virtual_tokens < 1:
        raise ConfigError("--num-virtual-tokens must be >= 1")
    soft = f"[soft:{num_virtual_tokens}]"
    if placement is Placement.PREFIX:
        return Template.parse(soft + body)
    last_field = list(_TOKEN_RE.finditer(body))
    fields = [m for m in last_field if m.group(2) and m.group(2) not in ANSWER_FIELDS]
    if not fields:
        raise ConfigError(f"--template {body!r}: no input field; add e.g. '{{text}}'")
    cut = fields[-1].end()
    return Template.parse(body[:cut] + soft + body[cut:])


@dataclass
class Encoded:
    input_ids: list[int]
    soft_index: list[int]


class TemplateEncoder:
    """Turns field values into token ids and a soft-token index plan, within `max_length` tokens.

    Consecutive literal text and fields are tokenised together (as the model saw text in pre-training); only
    the longest input field is truncated when an example does not fit.
    """

    def __init__(self, template: Template, tokenizer: Any, max_length: int) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.bos: list[int] = [bos] if bos is not None and probe and probe[0] == bos else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer (label word or target) as it follows the template."""
        return self._tokens(self.template.answer_space + answer)

    def _render(self, fields: Mapping[str, str]) -> Encoded:
        ids, soft = list(self.bos), [-1] * len(self.bos)
        run: list[str] = []

        def flush() -> None:
            tokens = self._tokens("".join(run))
            ids.extend(tokens)
            soft.extend([-1] * len(tokens))
            run.clear()

        for seg in self.template.segments:
            if seg.kind == "soft":
                flush()
                ids.extend([self.pad_id] * seg.length)
                soft.extend(range(seg.offset, seg.offset + seg.length))
            else:
                run.append(seg.value if seg.kind == "text" else fields[seg.value])
        flush()
        return Encoded(ids, soft)

    def encode(self, fields: Mapping[str, str], reserve: int = 0) -> Encoded:
        """Encode one example's context, leaving `reserve` tokens of room (for answer tokens)."""
        budget = self.max_length - reserve
        values = {name: str(fields[name]) for name in self.template.input_fields}
        encoded = self._render(values)
        for attempt in range(6):
            excess = len(encoded.input_ids) - budget
            if excess <= 0:
                return encoded
            longest = max(values, key=lambda k: len(values[k]))
            tokens = self._tokens(values[longest])
            keep = max(0, len(tokens) - excess - attempt)
            values[longest] = self.tokenizer.decode(tokens[:keep]) if keep else ""
            encoded = self._render(values)
        if len(encoded.input_ids) > budget:
            raise ConfigError(f"--max-length {self.max_length} is too small for the template and soft tokens "
                              f"({len(encoded.input_ids)} tokens with empty fields); raise --max-length")
        return encoded


def left_pad(sequences: Sequence[Encoded], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-pad encoded sequences into (B, T) tensors: input_ids, soft_index, attention_mask, position_ids.
    `multiple` rounds T up (fewer distinct shapes: a server then reuses its compiled matmul kernels)."""
    width = max(len(s.input_ids) for s in sequences)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    soft = torch.full((len(sequences), width), -1, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, width - n:] = torch.tensor(seq.input_ids, dtype=torch.long)
        soft[row, width - n:] = torch.tensor(seq.soft_index, dtype=torch.long)
        mask[row, width - n:] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "soft_index": soft, "attention_mask": mask, "position_ids": positions}
