"""`softprompt serve`: one frozen backbone serving every prompt in a folder over HTTP."""

from __future__ import annotations

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
    import uvicorn  # start-up time: serve only

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = pick_device(device)
    backbone = load_backbone(model, dtype=resolve_precision(precision, target), device=target, load_in=load_in)
    settings = ServeSettings(admin_token=admin_token, max_batch_rows=max_batch_rows, batch_wait_ms=batch_wait_ms,
                             mix_prompts=mix_prompts, max_body_bytes=max_body_bytes, max_inputs=max_inputs,
                             max_input_tokens=max_input_tokens, max_new_tokens=max_new_tokens,
                             reload_interval=reload_interval)
    application = create_app(PromptBank(backbone, cache_budget_bytes=int(prompt_cache_mb * 2**20)), prompts, settings)
    bank = application.state.bank
    logging.getLogger("softprompt.serve").info("serving %d prompt(s) from %s on %s: %s", len(bank), prompts,
                                               backbone.name, ", ".join(bank.names()) or "none yet")
    uvicorn.run(application, host=host, port=port, log_level=log_level)
