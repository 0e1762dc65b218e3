"""`softprompt serve`: one frozen backbone serving every prompt in a folder over HTTP."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..hub import load_backbone, resolve_precision
from ..inference.bank import PromptBank
from . import app
from .common import LoadIn, check_load_in, pick_device


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Backbone: a built-in name, a local folder or a hub id.")],
    prompts: Annotated[Path, typer.Option(help="Folder of prompt files (*.safetensors); watched for changes.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    admin_token: Annotated[Optional[str], typer.Option(
        envvar="SOFTPROMPT_ADMIN_TOKEN", show_envvar=True,
        help="Bearer token for uploading/deleting prompts (POST/DELETE /v1/prompts); without it they are off.")] = None,
    precision: Annotated[str, typer.Option(help="auto | bf16 | fp32.")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    load_in: LoadIn = None,
    max_batch_rows: Annotated[int, typer.Option(help="Rows per backbone batch.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to batch with.")] = 10.0,
    mix_prompts: Annotated[bool, typer.Option(
        "--mix-prompts/--one-prompt-per-batch", help="Batch rows of different prompts together.")] = True,
    max_inputs: Annotated[int, typer.Option(help="Inputs (x n choices) per request.")] = 64,
    max_input_tokens: Annotated[int, typer.Option(help="Tokens per input text.")] = 512,
    max_new_tokens: Annotated[int, typer.Option(help="Generated tokens per choice.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Request body size (JSON or a prompt file).")] = 4 << 20,
    prompt_cache_mb: Annotated[float, typer.Option(
        help="Memory for the prompts' cached keys/values (MB); the least recently used are dropped above it and "
             "recomputed when next needed.")] = 2048.0,
    reload_interval: Annotated[float, typer.Option(help="Seconds between prompt-folder scans (0: never).")] = 2.0,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error.")] = "info",
    engine: Annotated[str, typer.Option(help="torch: rows run on this process's backbone (mixed-prompt batches). "
                                             "vllm: rows run on a vLLM server as prompt embeddings (the one "
                                             "--vllm-url names, or one started here); the API stays the same.")
                      ] = "torch",
    vllm_url: Annotated[Optional[str], typer.Option(help="--engine vllm: a running `vllm serve MODEL "
                                                         "--enable-prompt-embeds` (same backbone) instead of "
                                                         "starting one.")] = None,
    vllm_python: Annotated[Optional[str], typer.Option(
        envvar="SOFTPROMPT_VLLM_PYTHON", show_envvar=True,
        help="--engine vllm: the Python whose environment has vLLM, to start its server.  [default: "
             ".venv-vllm/bin/python (make install-vllm), else this one]")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="--engine vllm: GPUs each replica's layers are split "
                                                           "across (vLLM's tensor parallelism).")] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(help="--engine vllm: pipeline stages (vLLM's pipeline "
                                                             "parallelism).")] = 1,
    data_parallel_size: Annotated[int, typer.Option(help="--engine vllm: engine replicas behind the one vLLM "
                                                         "server (vLLM's data parallelism).")] = 1,
    vllm_args: Annotated[str, typer.Option(help="--engine vllm: more arguments for the vLLM server it starts, "
                                                "e.g. '--enforce-eager --max-num-seqs 64'.")] = "",
) -> None:
    """Serve every prompt in --prompts on one resident backbone: /v1/classify, OpenAI-compatible
    /v1/completions and /v1/chat/completions, /v1/prompts, /healthz, /metrics."""
    from ..serve import ServeSettings, create_app  # start-up time: FastAPI loads only for `serve`

    if not prompts.is_dir():
        raise ConfigError(f"--prompts {prompts}: no such folder; create it or point to your prompt files")
    for flag, value in [("--max-batch-rows", max_batch_rows), ("--max-inputs", max_inputs),
                        ("--max-input-tokens", max_input_tokens), ("--max-body-bytes", max_body_bytes)]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if not prompt_cache_mb >= 0:  # NaN too
        raise ConfigError(f"--prompt-cache-mb must be 0 or more (got {prompt_cache_mb})")
    check_load_in(load_in)
    if engine not in ("torch", "vllm"):
        raise ConfigError(f"--engine {engine!r}: choose torch or vllm")
    if engine == "torch" and (vllm_url or vllm_args or max(tensor_parallel_size, pipeline_parallel_size,
                                                            data_parallel_size) > 1):
        raise ConfigError("--vllm-url, --vllm-args and the --*-parallel-size options apply to --engine vllm")
    for flag, value in [("--tensor-parallel-size", tensor_parallel_size),
                        ("--pipeline-parallel-size", pipeline_parallel_size),
                        ("--data-parallel-size", data_parallel_size)]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    import uvicorn  # start-up time: serve only

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = pick_device(device)
    backbone = load_backbone(model, dtype=resolve_precision(precision, target), device=target, load_in=load_in)
    settings = ServeSettings(admin_token=admin_token, max_batch_rows=max_batch_rows, batch_wait_ms=batch_wait_ms,
                             mix_prompts=mix_prompts, max_body_bytes=max_body_bytes, max_inputs=max_inputs,
                             max_input_tokens=max_input_tokens, max_new_tokens=max_new_tokens,
                             reload_interval=reload_interval)
    bank = PromptBank(backbone, cache_budget_bytes=int(prompt_cache_mb * 2**20))
    with contextlib.ExitStack() as stack:
        client = None
        if engine == "vllm":
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())  # as it was, when serving ends
            torch.set_num_threads(1)  # this process only embeds rows; the cores are vLLM's
            client = stack.enter_context(_vllm_client(model, backbone, vllm_url, vllm_python, vllm_args,
                                                      tensor_parallel_size, pipeline_parallel_size,
                                                      data_parallel_size))
        application = create_app(bank, prompts, settings, vllm=client)
        logging.getLogger("softprompt.serve").info("serving %d prompt(s) from %s on %s (%s engine): %s", len(bank),
                                                   prompts, backbone.name, engine, ", ".join(bank.names()) or
                                                   "none yet")
        uvicorn.run(application, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def _vllm_client(model: str, backbone, url: str | None, python: str | None, extra: str, tensor_parallel: int,
                 pipeline_parallel: int, data_parallel: int):
    """A `VLLMClient` for `--engine vllm`: on `url`, or on a vLLM server started here for the same backbone
    (stopped when serving ends); checked to serve the same model."""
    import asyncio
    import shlex

    import torch

    from ..clients.vllm import VLLMClient
    from ..hub import BUILTIN_BACKBONES, builtin_backbone_dir
    from ..serve.vllm_engine import check_same_backbone, started_vllm_server, vllm_command, vllm_python
    from .common import free_port

    with contextlib.ExitStack() as stack:
        if url is None:
            folder = str(builtin_backbone_dir(model)) if model in BUILTIN_BACKBONES else model
            port = free_port()
            dtype = "float32" if backbone.dtype == torch.float32 else "bfloat16"
            command = vllm_command(vllm_python(python), folder, port, dtype=dtype, tensor_parallel=tensor_parallel,
                                   pipeline_parallel=pipeline_parallel, data_parallel=data_parallel,
                                   max_model_len=_context_length(backbone),
                                   extra=shlex.split(extra))
            url = stack.enter_context(started_vllm_server(command, port, Path("runs") / "vllm" / f"{port}.log"))
        client = VLLMClient(url)
        gap = asyncio.run(_checked(client, backbone, check_same_backbone))
        logging.getLogger("softprompt.serve").info("vLLM at %s serves the same backbone (next-token log-probs "
                                                   "within %.1e)", url, gap)
        yield client


def _context_length(backbone) -> int:
    """Tokens per row the vLLM server makes room for: the backbone's position limit, at most 4096 (more with
    --vllm-args '--max-model-len N')."""
    config = getattr(getattr(backbone, "model", None), "config", None)
    return min(4096, int(getattr(config, "max_position_embeddings", 4096) or 4096))


async def _checked(client, backbone, check) -> float:
    try:
        return await check(client, backbone)
    finally:
        await client.aclose()  # the pool belongs to this event loop; the server opens its own
