"""Soft prompts on a stock vLLM server (`vllm serve MODEL --enable-prompt-embeds`).

vLLM takes a request's input as prompt embeddings: a (tokens, hidden size) tensor, `torch.save`d and base64-encoded
(`prompt_embeds` in `/v1/completions`). A soft prompt is exactly that: this client renders a row with its
prompt's template, embeds the text tokens with the backbone's own input embeddings, places the prompt's vectors at
the soft positions (and adds a DePT prompt's offsets), and sends the result.

- **Classification** by label words: the log-probability of each word's first token comes back through
  `logprob_token_ids` (one request per row gives every word's first token). A word of k tokens takes k requests:
  its j-th token is scored after the context and the word's first j tokens, so scores equal the torch engine's
  for any verbaliser (several words per class: log-sum-exp, as in `Verbalizer.class_scores`).
- **Generation**: the same embeddings with vLLM's sampling (temperature, top-p, seed, stop strings), streamed
  piece by piece when asked.

Requests run concurrently, so vLLM's scheduler batches rows of different prompts together. Deep prompts (vectors in
every layer's keys/values) cannot be expressed as input embeddings: they are refused in one line.

    client = VLLMClient("http://gpu-box:8000")
    model = from_pretrained("runs/rt/prompt.safetensors")      # the backbone vLLM serves
    client.classify(model, ["A three-hour cinema master class."])
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..kinds.table import CapabilityError
from ..inference.batch import Classification, Generation, fields_of
from ..kinds.causal_lm.model import PromptedModel

DEFAULT_TIMEOUT = 600.0
RETRIES = 3  # a request that fails in transport (a kept-alive connection the server closed) is sent again


class VLLMError(ConfigError):
    """The vLLM server could not be reached or refused a request (the message names the URL and the reason)."""


def tensor_payload(tensor: torch.Tensor) -> str:
    """A (tokens, hidden) tensor as vLLM's `prompt_embeds` field: `torch.save` bytes, base64-encoded."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().to("cpu").contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def require_input_embeddings(model: Any) -> PromptedModel:
    """`model` if vLLM can serve it as prompt embeddings, else one line saying what to use instead."""
    if not isinstance(model, PromptedModel):
        raise CapabilityError(f"vLLM serves decoder-only language models; this prompt is for a "
                              f"{type(model).__name__}: serve it with --engine torch")
    if model.deep:
        raise CapabilityError("a deep prompt lives in every layer's keys/values, which vLLM's prompt embeddings "
                              "cannot carry: serve it with --engine torch")
    return model


@torch.no_grad()
def row_embeddings(model: PromptedModel, inputs: Mapping[str, str] | str) -> torch.Tensor:
    """One row as vLLM's input: (tokens, hidden) embeddings of the rendered template with the prompt placed."""
    batch = model.make_batch([dict(fields_of(model, inputs))], label_field=None)
    batch = {k: v.to(model.backbone.device) for k, v in batch.items()}
    return model.embed(batch)[0].float().cpu()


@torch.no_grad()
def token_embeddings(model: PromptedModel, ids: Sequence[int]) -> torch.Tensor:
    """(len(ids), hidden) input embeddings of plain tokens (a label word's leading tokens)."""
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=model.backbone.device)
    return model.backbone.embed(tokens)[0].float().cpu()


class VLLMClient:
    """Classify and generate with soft prompts through a vLLM server's OpenAI-compatible HTTP API.

    `url`: the server's base URL; `model`: the served model id (default: the first one it lists). The async
    methods (`aclassify`, `agenerate`) share one connection pool; the plain ones run them to completion.
    """

    def __init__(self, url: str, *, model: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_connections: int = 64) -> None:
        self.url = url.rstrip("/")
        self._model = model
        self.timeout = timeout
        self.max_connections = max_connections
        self._client = None

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _http(self):
        import httpx  # optional: the vLLM client and engine only

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(
                max_connections=self.max_connections, max_keepalive_connections=self.max_connections))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx  # optional: the vLLM client and engine only

        for attempt in range(RETRIES + 1):
            try:
                response = await self._http().request(method, self.url + path, **kwargs)
                break
            except httpx.TransportError as exc:  # every request here is idempotent: scoring, or a whole answer
                if attempt == RETRIES or isinstance(exc, httpx.TimeoutException):
                    raise VLLMError(f"vLLM server {self.url}: {type(exc).__name__}: {exc or 'no answer'}") from None
                await asyncio.sleep(0.2 * (attempt + 1))
        if response.status_code >= 400:
            raise VLLMError(f"vLLM server {self.url}{path} answered {response.status_code}: "
                            f"{_error_message(response.text)}")
        return response.json()

    async def served_model(self) -> str:
        """The model id requests name (the first the server lists, unless one was given)."""
        if self._model is None:
            listed = (await self._call("GET", "/v1/models")).get("data") or []
            if not listed:
                raise VLLMError(f"vLLM server {self.url} lists no model")
            self._model = str(listed[0]["id"])
        return self._model

    async def max_model_len(self) -> int | None:
        for entry in (await self._call("GET", "/v1/models")).get("data") or []:
            if entry.get("id") == await self.served_model():
                return entry.get("max_model_len")
        return None

    async def _completion(self, embeddings: torch.Tensor, **fields: Any) -> dict[str, Any]:
        body = {"model": await self.served_model(), "prompt_embeds": tensor_payload(embeddings), **fields}
        return await self._call("POST", "/v1/completions", json=body)

    # ---- scoring -------------------------------------------------------------------------------------------
    async def next_token_log_probs(self, embeddings: torch.Tensor, token_ids: Sequence[int]) -> list[float]:
        """log p(token | embeddings) for each of `token_ids`, at the position after the embeddings."""
        ids = sorted(set(int(t) for t in token_ids))
        answer = await self._completion(embeddings, max_tokens=1, temperature=0.0, logprobs=1,
                                        logprob_token_ids=ids, return_tokens_as_token_ids=True)
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        found = {int(key.rsplit(":", 1)[1]): value for key, value in top.items()}
        missing = [t for t in ids if t not in found]
        if missing:
            raise VLLMError(f"vLLM server {self.url} returned no log-probability for token(s) {missing}")
        return [float(found[int(t)]) for t in token_ids]

    async def word_scores(self, model: PromptedModel, inputs: Mapping[str, str] | str) -> torch.Tensor:
        """Log-likelihood of each of the prompt's label words after the row: (W,), as `PromptedModel.word_scores`."""
        context = row_embeddings(require_input_embeddings(model), inputs)
        words = [list(ids) for ids in model.word_ids]
        firsts = await self.next_token_log_probs(context, [ids[0] for ids in words])
        later: list[tuple[int, Any]] = []
        for w, ids in enumerate(words):
            for j in range(1, len(ids)):
                extended = torch.cat([context, token_embeddings(model, ids[:j])])
                later.append((w, self.next_token_log_probs(extended, [ids[j]])))
        scores = list(firsts)
        for (w, _), values in zip(later, await asyncio.gather(*(call for _, call in later))):
            scores[w] += values[0]
        return torch.tensor(scores, dtype=torch.float32)

    async def aclassify_one(self, model: PromptedModel, inputs: Mapping[str, str] | str) -> Classification:
        if model.verbalizer is None:
            raise ConfigError("a generation prompt cannot classify; send it a completion request")
        scores = model.verbalizer.class_scores((await self.word_scores(model, inputs))[None])[0]
        labels = model.labels
        return Classification(labels[int(scores.argmax())], {label: float(v) for label, v in zip(labels, scores)})

    async def aclassify(self, model: PromptedModel, inputs: Sequence[Mapping[str, str] | str]
                        ) -> list[Classification]:
        return list(await asyncio.gather(*(self.aclassify_one(model, x) for x in inputs)))

    def classify(self, model: PromptedModel, inputs: Sequence[Mapping[str, str] | str]) -> list[Classification]:
        """Label and class scores per input, as `softprompt predict` gives them (scores: log-likelihoods)."""
        return _run(self.aclassify(model, inputs), self)

    # ---- generation ----------------------------------------------------------------------------------------
    async def agenerate(self, model: PromptedModel, inputs: Mapping[str, str] | str, *, max_new_tokens: int = 32,
                        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                        stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None) -> Generation:
        """Continue the row's rendered template; `on_text` receives each piece as vLLM streams it."""
        if model.task.value != "generation":
            raise ConfigError("a classification prompt cannot generate; send it a classify request")
        embeddings = row_embeddings(require_input_embeddings(model), inputs)
        if max_new_tokens <= 0:
            return Generation("", "length", embeddings.shape[0], 0)
        fields: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                                  "stop": list(stop) or None}
        if seed is not None:
            fields["seed"] = seed
        if on_text is None:
            answer = await self._completion(embeddings, **fields)
            choice, usage = answer["choices"][0], answer.get("usage") or {}
            return Generation(choice["text"], _finish(choice), int(usage.get("prompt_tokens", embeddings.shape[0])),
                              int(usage.get("completion_tokens", 0)))
        pieces: list[str] = []
        finish, usage = "length", {}
        async for event in self._stream(embeddings, **fields):
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    pieces.append(choice["text"])
                    on_text(choice["text"])
                if choice.get("finish_reason"):
                    finish = _finish(choice)
            usage = event.get("usage") or usage
        return Generation("".join(pieces), finish, int(usage.get("prompt_tokens", embeddings.shape[0])),
                          int(usage.get("completion_tokens", 0)))

    def generate(self, model: PromptedModel, inputs: Mapping[str, str] | str, **settings: Any) -> Generation:
        return _run(self.agenerate(model, inputs, **settings), self)

    async def _stream(self, embeddings: torch.Tensor, **fields: Any) -> AsyncIterator[dict[str, Any]]:
        import httpx  # optional: the vLLM client and engine only

        body = {"model": await self.served_model(), "prompt_embeds": tensor_payload(embeddings), "stream": True,
                "stream_options": {"include_usage": True}, **fields}
        for attempt in range(RETRIES + 1):  # only until the first event: a started stream is not sent twice
            started = False
            try:
                async for event in self._events(body):
                    started = True
                    yield event
                return
            except httpx.TransportError as exc:
                if started or attempt == RETRIES or isinstance(exc, httpx.TimeoutException):
                    raise VLLMError(f"vLLM server {self.url}: {type(exc).__name__}: {exc or 'no answer'}") from None
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self._http().stream("POST", self.url + "/v1/completions", json=body) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise VLLMError(f"vLLM server {self.url}/v1/completions answered {response.status_code}: "
                                f"{_error_message(text)}")
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise VLLMError(f"vLLM server {self.url}: {_error_message(line[6:])}")
                    yield event


def _finish(choice: Mapping[str, Any]) -> str:
    return "stop" if choice.get("finish_reason") == "stop" else "length"


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip().splitlines()[0][:300] if text.strip() else "no message"
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message).strip().splitlines()[0][:300] if str(message).strip() else "no message"


def _run(coroutine, client: VLLMClient):
    async def main():
        try:
            return await coroutine
        finally:
            await client.aclose()  # the pool belongs to this event loop

    return asyncio.run(main())
