"""`serve --engine vllm`: the same HTTP API, with every row run on a vLLM server as prompt embeddings.

softprompt's server keeps what vLLM does not have: the prompt registry (folder, upload, delete), templates,
label-word classification, the playground and its metrics. Each row becomes requests to a vLLM server started with
`--enable-prompt-embeds` (`clients.vllm.VLLMClient`); they run concurrently, so vLLM's scheduler batches rows of
every prompt together with continuous batching. The vLLM server is one softprompt starts (`start_vllm_server`,
from the Python environment that has vLLM) or one already running anywhere (`--vllm-url`), GPU or CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..clients.vllm import VLLMClient, VLLMError, require_input_embeddings
from ..errors import ConfigError
from .batcher import Work, resolve_future
from .metrics import Metrics

log = logging.getLogger("softprompt.serve")

# Where `make install-vllm` puts vLLM (its own environment: vLLM pins an older transformers than softprompt's).
VLLM_VENV = ".venv-vllm"


class VLLMEngine:
    """Takes the place of `DynamicBatcher` in the app: `submit` starts one task per row on the request's event
    loop; `abandon` cancels them (the HTTP request to vLLM closes, and vLLM aborts the row)."""

    def __init__(self, client: VLLMClient, metrics: Metrics) -> None:
        self.client = client
        self.metrics = metrics
        self._tasks: dict[int, asyncio.Task] = {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    async def aclose(self) -> None:
        await self.client.aclose()

    def submit(self, works: list[Work]) -> None:
        for work in works:
            require_input_embeddings(work.request.model)
        for work in works:
            self._tasks[id(work)] = work.loop.create_task(self._run(work))
        self.metrics.queue_rows.set(len(self._tasks))

    def abandon(self, works: list[Work]) -> None:
        for work in works:
            task = self._tasks.get(id(work))
            if task is not None and not work.future.done():
                work.request.abandoned = True
                work.future.cancel()
                task.cancel()
                self.metrics.abandoned_rows.inc()

    async def _run(self, work: Work) -> None:
        request = work.request
        started = time.perf_counter()
        result: Any = None
        error: BaseException | None = None
        try:
            if request.task == "classify":
                result = await self.client.aclassify_one(request.model, request.inputs)
            else:
                result = await self.client.agenerate(
                    request.model, request.inputs, max_new_tokens=request.max_new_tokens,
                    temperature=request.temperature, top_p=request.top_p, seed=request.seed, stop=request.stop,
                    on_text=request.on_text)
                self.metrics.generated_tokens.inc(result.completion_tokens)
        except asyncio.CancelledError:
            error = None
        except Exception as exc:  # noqa: BLE001 -- handed to the request that caused it
            error = exc
        finally:
            self._tasks.pop(id(work), None)
            self.metrics.queue_rows.set(len(self._tasks))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if error is None and result is not None and not request.abandoned:
            self.metrics.finished_rows.inc()
        if not work.future.done():
            resolve_future(work.future, result, error)
        if work.stream is not None:
            work.stream.put_nowait((work.index, None))


def vllm_python(explicit: str | None) -> str:
    """The Python that has vLLM: `explicit`, else ./.venv-vllm's (make install-vllm), else this one if it has it."""
    candidates = [explicit] if explicit else [str(Path(VLLM_VENV) / "bin" / "python"), sys.executable]
    for python in candidates:
        if python and Path(python).exists() and subprocess.run(
                [python, "-c", "import vllm"], capture_output=True, timeout=120).returncode == 0:
            return python
    where = explicit or f"{VLLM_VENV}/ or this environment"
    raise ConfigError(f"--engine vllm: no vLLM found in {where}: run `make install-vllm`, or point --vllm-url at a "
                      f"running `vllm serve MODEL --enable-prompt-embeds`")


def vllm_command(python: str, model_folder: str, port: int, *, dtype: str, tensor_parallel: int = 1,
                 pipeline_parallel: int = 1, data_parallel: int = 1, max_model_len: int | None = None,
                 extra: Sequence[str] = ()) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server for this backbone, with prompt embeddings on."""
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_folder, "--host", "127.0.0.1",
               "--port", str(port), "--enable-prompt-embeds", "--dtype", dtype,
               "--tensor-parallel-size", str(tensor_parallel), "--pipeline-parallel-size", str(pipeline_parallel),
               "--data-parallel-size", str(data_parallel), "--disable-uvicorn-access-log"]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return command + list(extra)


@contextlib.contextmanager
def started_vllm_server(command: list[str], port: int, log_file: Path, *, startup_timeout: float = 900.0):
    """Run `command` (vllm_command) until the block ends; yields its URL once it answers /v1/models."""
    import httpx  # optional: the vLLM engine only

    env = {**os.environ}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GB of key/value cache on a CPU (vLLM's own default: 4)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(log_file, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        log.info("starting vLLM: %s (log: %s)", shlex.join(command), log_file)
        while True:
            if process.poll() is not None:
                tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise ConfigError(f"--engine vllm: the vLLM server exited with code {process.returncode} before "
                                  f"answering ({tail[0][:300]}); its log: {log_file}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ConfigError(f"--engine vllm: the vLLM server did not answer within {startup_timeout:.0f} s; "
                                  f"its log: {log_file}")
            time.sleep(1.0)
        log.info("vLLM answers on %s", url)
        yield url
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=30)


async def check_same_backbone(client: VLLMClient, backbone, text: str = "The capital of France is") -> float:
    """Refuse a vLLM server that serves another model: the next-token log-probabilities of a short text must agree
    with the local backbone's, within 0.1 nats when this backbone runs in fp32 and 1 nat in a 16-bit precision
    (bf16 logits of magnitude 20 are only resolved to 0.125 each, on both sides). Returns the largest gap."""
    import torch

    ids = backbone.tokenizer(text, return_tensors="pt").input_ids.to(backbone.device)
    with torch.no_grad():
        embeddings = backbone.embed(ids)
        hidden, _ = backbone.hidden_states(embeddings, torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device)[None])
        local = torch.log_softmax(backbone.token_logits(hidden[:, -1]).float(), dim=-1)[0]
    probe = local.topk(5).indices.tolist()
    try:
        remote = await client.next_token_log_probs(embeddings[0].float().cpu(), probe)
    except VLLMError as exc:
        raise ConfigError(f"--engine vllm: {exc}") from None
    gap = max(abs(r - float(local[t])) for r, t in zip(remote, probe))
    if gap > (0.1 if backbone.dtype == torch.float32 else 1.0):
        raise ConfigError(f"--engine vllm: {client.url} serves '{await client.served_model()}', whose next-token "
                          f"log-probabilities differ from --model {backbone.name}'s by {gap:.2f} nats: serve the "
                          f"same backbone on both sides")
    return gap
