"""Request bodies. Unknown OpenAI fields are ignored (a client may send them); values out of range are a 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _encodable(text: str) -> str:
    """Refuse a lone surrogate (valid in JSON's \\uXXXX escapes, not in UTF-8): no tokenizer can read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone surrogate (\\ud800-\\udfff) that is not a character") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
SEED_LIMIT = 2**53  # inside a torch generator's range (2**63), and exact in every JSON parser (a double holds 2**53)


class ClassifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="name of a classification prompt")
    inputs: list[Text | dict[Text, Text]] = Field(min_length=1, description="texts, or field -> text mappings")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="prompt name (see GET /v1/models)")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionBody(_Sampling):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Text | list[dict] | None = None

    @field_validator("content")
    @classmethod
    def _parts_are_text(cls, value: str | list[dict] | None) -> str | list[dict] | None:
        for part in value if isinstance(value, list) else ():
            _encodable(str(part.get("text", "")))
        return value

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="at least one 'user' message (the last one "
                                        "fills the prompt's input field)", json_schema_extra={"contains": {
                                            "type": "object", "required": ["role"],
                                            "properties": {"role": {"const": "user"}}}})
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape)."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the error codes an endpoint can answer, all in the `ErrorBody` shape."""
    meaning = {401: "missing or wrong admin token", 403: "uploads and deletions are off", 404: "no such prompt",
               409: "a prompt trained on another backbone", 411: "no Content-Length", 413: "request over a limit",
               422: "invalid request, prompt file or input", 507: "the server could not store the file (disk full)"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}
