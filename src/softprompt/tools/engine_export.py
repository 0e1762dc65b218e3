"""Prompt files for serving engines: vLLM (prompt embeddings) and TensorRT-LLM / NeMo (a prompt table).

- `export_vllm`: one prompt, for a stock `vllm serve BACKBONE --enable-prompt-embeds`. The folder holds the prompt
  file (what `softprompt.clients.vllm.VLLMClient` reads: it renders the template, embeds the text with the
  backbone's input embeddings, places the vectors and sends `prompt_embeds`), the vectors alone as vLLM loads a
  tensor (`soft_tokens.pt`, for clients in other languages that assemble the embeddings themselves), and
  `vllm.json`: the command to serve, the template, and each label word's token ids.
- `export_trtllm`: several prompts of one backbone as TensorRT-LLM's p-tuning prompt table: `prompt_table.npy`
  of shape (tasks, longest prompt, hidden) in float32 (shorter prompts zero-padded), and `tasks.json` with each
  prompt's task id. A request names its task id (`--prompt_tasks` in TensorRT-LLM's run.py, `task_id` in NeMo /
  Triton) and carries the ids `vocab_size + k` at its k-th soft position; TensorRT-LLM looks those up in the task's
  rows of the table. Checked here by reading the table back; not run on a GPU.

Deep prompts (vectors in every layer's keys/values) and DePT prompts (offsets added to the text embeddings) cannot
be written as input embeddings alone and are refused in one line, as are prompts of other backbone kinds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..formats import PROMPT_FILE, read_prompt_file, read_prompt_tensors, write_export_folder
from ..template import Template

VLLM_FILES = {PROMPT_FILE, "soft_tokens.pt", "vllm.json", "README.md"}
TRTLLM_FILES = {"prompt_table.npy", "tasks.json", "README.md"}


def _plain_causal_prompt(path: str | Path, engine: str) -> dict[str, Any]:
    """The file's metadata if `engine` can take it as input embeddings; else one line saying why not."""
    _, meta = read_prompt_tensors(path)
    kind = meta["backbone"].get("kind")
    if kind != "causal_lm":
        raise ConfigError(f"{path}: a {kind} prompt; {engine} serves decoder-only language models (causal_lm)")
    method = meta.get("method", "prompt")
    if method not in ("prompt", "residual"):  # a residual prompt is saved folded: a plain prompt
        why = {"deep": "its vectors live in every layer's keys/values",
               "dept": "its low-rank offset changes the text embeddings too"}.get(method, "")
        raise ConfigError(f"{path} is a {method} prompt{': ' + why if why else ''}; {engine} takes input "
                          f"embeddings only: serve it with `softprompt serve --engine torch`")
    return meta


def export_vllm(prompt_path: str | Path, out_dir: str | Path, *, backbone_folder: str | None = None,
                overwrite: bool = False) -> Path:
    """The vLLM export of one prompt file (see the module docstring); `backbone_folder`: what `vllm serve`
    loads (default: the backbone name in the file)."""
    meta = _plain_causal_prompt(prompt_path, "vLLM")
    vectors, meta = read_prompt_file(prompt_path)
    template = Template.parse(meta["template"])
    served = backbone_folder or meta["backbone"]["name"]
    manifest = {
        "format": "softprompt-vllm", "version": 1,
        "serve": f"vllm serve {served} --enable-prompt-embeds",
        "backbone": meta["backbone"]["name"], "hidden_size": int(vectors.shape[1]),
        "num_virtual_tokens": int(vectors.shape[0]), "template": template.source,
        "soft_runs": [s.length for s in template.segments if s.kind == "soft"],
        "task": meta.get("task"), "labels": meta.get("labels"), "label_words": meta.get("verbalizer"),
        "request": "POST /v1/completions with prompt_embeds = base64(torch.save(embeddings of the rendered "
                   "template, soft_tokens.pt's rows at the [soft:N] positions in order)); classify with max_tokens 1 "
                   "and logprob_token_ids = the label words' first token ids (softprompt.clients.vllm does this, "
                   "and scores words of several tokens too)",
    }

    def write(folder: Path) -> None:
        shutil.copyfile(prompt_path, folder / PROMPT_FILE)
        torch.save(vectors.float().contiguous(), folder / "soft_tokens.pt")
        (folder / "vllm.json").write_text(json.dumps(manifest, indent=1))
        (folder / "README.md").write_text(
            f"# {Path(prompt_path).stem}: a soft prompt for vLLM\n\nServe the backbone with prompt embeddings on:\n\n"
            f"    {manifest['serve']}\n\nand query it with softprompt's client (it renders the template and places "
            f"the vectors):\n\n    from softprompt import from_pretrained\n"
            f"    from softprompt.clients.vllm import VLLMClient\n"
            f"    model = from_pretrained('{out_dir}')\n"
            f"    VLLMClient('http://localhost:8000').classify(model, ['some text'])\n\n"
            f"`soft_tokens.pt` holds the {manifest['num_virtual_tokens']} vectors alone (torch.save, float32) for "
            f"clients that assemble `prompt_embeds` themselves; `vllm.json` describes the template and label "
            f"words.\n")

    return write_export_folder(out_dir, VLLM_FILES, overwrite, write, what="vLLM export")


def export_trtllm(prompt_paths: Sequence[str | Path], out_dir: str | Path, *, vocab_size: int | None = None,
                  overwrite: bool = False) -> Path:
    """A TensorRT-LLM / NeMo prompt table of several prompt files of one backbone (task ids in the given order)."""
    if not prompt_paths:
        raise ConfigError("--format trtllm needs at least one prompt file")
    loaded = []
    for path in prompt_paths:
        _plain_causal_prompt(path, "TensorRT-LLM's prompt table")
        vectors, meta = read_prompt_file(path)
        loaded.append((Path(path), vectors.float(), meta))
    names = {m["backbone"]["name"] for _, _, m in loaded}
    sizes = {int(v.shape[1]) for _, v, _ in loaded}
    if len(names) > 1 or len(sizes) > 1:
        raise ConfigError(f"one prompt table serves one backbone; these prompts are for {sorted(names)} "
                          f"(hidden sizes {sorted(sizes)})")
    stems = [p.stem for p, _, _ in loaded]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"two prompt files share a name ({', '.join(sorted(s for s in stems if stems.count(s) > 1))}"
                          f"); rename one: task names come from file names")
    longest = max(int(v.shape[0]) for _, v, _ in loaded)
    table = np.zeros((len(loaded), longest, sizes.pop()), dtype=np.float32)
    tasks = []
    for task_id, (path, vectors, meta) in enumerate(loaded):
        table[task_id, : vectors.shape[0]] = vectors.numpy()
        tasks.append({"task_id": task_id, "name": path.stem, "num_virtual_tokens": int(vectors.shape[0]),
                      "template": meta["template"], "task": meta.get("task"), "labels": meta.get("labels"),
                      "label_words": meta.get("verbalizer")})
    manifest = {"format": "softprompt-trtllm-prompt-table", "version": 1, "backbone": names.pop(),
                "shape": list(table.shape), "dtype": "float32",
                "vocab_size": vocab_size or loaded[0][2].get("tokenizer", {}).get("vocab_size"),
                "soft_token_ids": "the k-th [soft] position of a row carries id vocab_size + k "
                                  "(k = 0 .. num_virtual_tokens-1); the request names its task_id",
                "tasks": tasks}

    def write(folder: Path) -> None:
        np.save(folder / "prompt_table.npy", table)
        (folder / "tasks.json").write_text(json.dumps(manifest, indent=1))
        (folder / "README.md").write_text(
            f"# A TensorRT-LLM / NeMo p-tuning prompt table ({len(tasks)} tasks)\n\n`prompt_table.npy`: "
            f"{tuple(table.shape)} float32 (tasks x longest prompt x hidden), shorter prompts zero-padded. Task ids: "
            + ", ".join(f"{t['task_id']} = {t['name']}" for t in tasks)
            + ".\n\nBuild the engine with `--max_prompt_embedding_table_size` >= "
            f"{table.shape[0] * table.shape[1]}; run with `--prompt_table_path prompt_table.npy --prompt_tasks "
            f"<task id per row>`, each row's soft positions holding ids vocab_size + k. Written by softprompt and "
            f"read back in its tests; not run on a GPU there.\n")

    return write_export_folder(out_dir, TRTLLM_FILES, overwrite, write, what="prompt table")


def read_trtllm_table(folder: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(table, tasks.json) of an `export_trtllm` folder."""
    folder = Path(folder)
    return np.load(folder / "prompt_table.npy"), json.loads((folder / "tasks.json").read_text())
