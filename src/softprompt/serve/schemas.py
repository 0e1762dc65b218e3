"""Request bodies. Unknown OpenAI fields are ignored (a client may send them); values out of range are a 422."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClassifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="name of a classification prompt")
    inputs: list[str | dict[str, str]] = Field(min_length=1, description="texts, or field -> text mappings")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="prompt name (see GET /v1/models)")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionBody(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
