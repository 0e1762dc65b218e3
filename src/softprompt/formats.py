"""The prompt file: safetensors with the prompt's tensors and JSON metadata.

Prompt tuning stores `prompt_embeddings` [n, d] (a residual prompt too: its MLP is folded in); deep prompt tuning
stores `prefix_keys` and `prefix_values` [layers, n, kv_heads, head_dim]; DePT stores `prompt_embeddings` [m, d],
`text_offset_a` [max positions, r] and `text_offset_b` [r, d] (metadata `method`: prompt, deep or dept).

Metadata names the backbone and its weight fingerprint, the template, the verbaliser, the init and the
training figures. Loading onto another backbone is refused with `IncompatiblePromptError`. Writes are atomic
(temp file in the same folder, then rename). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import ConfigError, IncompatiblePromptError, PromptFileError, StorageError
from .methods import file_method
from .protocols import Backbone, BackboneKind, Prompted, TaskType
from .version import __version__

TENSOR_NAME = "prompt_embeddings"
FORMAT_NAME = "softprompt"
FORMAT_VERSION = 1


def prompt_metadata(model: Prompted, **extra: Any) -> dict[str, Any]:
    """Everything needed to rebuild `model` around its backbone, plus `extra` (init, training figures, ...)."""
    backbone = model.backbone
    meta: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "softprompt_version": __version__,
        "method": model.prompt.method,
        "backbone": {"name": backbone.name, "kind": backbone.kind.value, "fingerprint": backbone.fingerprint(),
                     "hidden_size": backbone.hidden_size, **backbone.shape_metadata()},
        "tokenizer": backbone.tokenizer_metadata(),
        "num_virtual_tokens": model.prompt.num_virtual_tokens,
        "task": model.task.value,
        "max_length": model.max_length,
        **model.file_metadata(),  # template, verbaliser, labels; a head, kind-specific options
    }
    meta.update(extra)
    return meta


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _process_umask()  # read once, at import (setting it back and forth later would race other threads)


def user_permissions(path: str | Path, directory: bool = False) -> None:
    """Give a file made by `mkstemp` / `mkdtemp` (0600 / 0700) the permissions the user's umask gives new files:
    a server running as another user can then read a prompt file, as it could one written by `cp`."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def check_output_path(path: str | Path, flag: str = "--output", *, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder where a file goes (or a file
    where a folder goes), or a path that runs through a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file; give a folder (it holds the run's files)")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            break


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it into place (with the user's normal
    file permissions). A write that fails (a full disk) raises `StorageError` and leaves `path` as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        user_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{path}: could not write it ({exc.strerror or exc}); the file there before, if any, "
                           "is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_export_folder(out: str | Path, owned: set[str], overwrite: bool, write: Callable[[Path], None],
                        what: str = "export") -> Path:
    """Fill a new folder with `write(staging)` and rename it to `out` atomically. Nothing a user owns is written
    over: a file at `out`, or a folder holding anything but `owned` files (a previous export of the same format),
    is refused; a previous export is replaced only with `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a folder name for the {what}")
    if out.is_dir() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in owned)
        if foreign:
            raise ConfigError(f"{out} already holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; "
                              f"export into a new or empty folder (nothing was written)")
        if not overwrite:
            raise ConfigError(f"{out} already holds a previous {what}; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    user_permissions(staging, directory=True)
    try:
        write(staging)
        if out.exists():  # empty, or only a previous export's files (checked above): put it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "export")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


# Set by `softprompt.pretrained`, which knows the kind table and the backbone loader (they import this module).
_FROM_PRETRAINED: Callable[..., Prompted] | None = None


class Pretrained:
    """`save_pretrained` / `from_pretrained` on every prompted model, as transformers and PEFT models have them:
    a folder holding `prompt.safetensors` (or the file itself)."""

    def save_pretrained(self, folder: str | Path, **extra: Any) -> Path:
        """Write `folder/prompt.safetensors` (atomically); returns its path."""
        return save_prompt(Path(folder) / PROMPT_FILE, self, **extra)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, path: str | Path, backbone: Any = None, **options: Any) -> Any:
        """Load a prompt folder or file; `backbone` (a loaded backbone or a name) defaults to the one named in the
        file. `options`: `precision`, `device` for a backbone loaded here."""
        if _FROM_PRETRAINED is None:
            raise RuntimeError("import softprompt first")  # the package import sets the loader
        model = _FROM_PRETRAINED(path, backbone, **options)
        if not isinstance(model, cls):
            raise PromptFileError(f"{path} holds a {type(model).__name__} prompt, not a {cls.__name__}; load it with "
                                  "softprompt.from_pretrained")
        return model


PROMPT_FILE = "prompt.safetensors"


def save_prompt(path: str | Path, model: Prompted, **extra: Any) -> Path:
    """Write `model`'s prompt and metadata to `path` atomically.

    Examples:
        >>> save_prompt("runs/rt/prompt.safetensors", model, init="labels")   # doctest: +SKIP
    """
    meta = prompt_metadata(model, **extra)
    tensors = model.file_tensors()  # the prompt's (a deep prompt's MLP folded into plain prefixes) and a head's
    header = {"format": FORMAT_NAME, FORMAT_NAME: json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_prompt_file(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """(input embeddings [n, d] fp32, metadata) of a prompt-tuning file. Raises `PromptFileError` for anything
    that is not our file, and for a deep prompt (which has no input embeddings: see `read_prompt_tensors`)."""
    tensors, meta = read_prompt_tensors(path)
    if TENSOR_NAME not in tensors:
        raise PromptFileError(f"{path} holds a {meta.get('method')} prompt, which has no input embeddings")
    return tensors[TENSOR_NAME], meta


def read_prompt_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors by name in fp32, metadata) of any prompt file. Raises `PromptFileError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PromptFileError(f"{path}: not a readable safetensors file ({exc})") from None
    if header.get("format") != FORMAT_NAME:
        raise PromptFileError(f"{path}: not a softprompt file (no softprompt metadata)")
    try:
        meta = json.loads(header[FORMAT_NAME])
        if not isinstance(meta, dict) or not isinstance(meta.get("backbone"), dict):
            raise ValueError("the metadata must be a JSON object with a 'backbone' object")
        meta["backbone"].setdefault("kind", BackboneKind.CAUSAL_LM.value)  # files from before other kinds existed
        BackboneKind(meta["backbone"]["kind"])
        _check_fields(meta)
    except (KeyError, ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise PromptFileError(f"{path}: damaged metadata ({exc})") from None
    method = file_method(meta, path)
    missing = [name for name in method.tensors if name not in tensors]
    if missing:
        raise PromptFileError(f"{path}: a {method.name.value} prompt file without tensor(s) {missing}")
    count = meta.get("num_virtual_tokens")
    for name in method.tensors:
        shape = tuple(tensors[name].shape)
        dims, axis = _TOKEN_AXIS.get(name, (2, None))
        if len(shape) != dims or (axis is not None and shape[axis] != count):
            raise PromptFileError(f"{path}: tensor '{name}' of shape {shape} disagrees with its metadata")
    for first, first_axis, second, second_axis in _AGREEING_AXES:  # (their dimensions were checked just above)
        if {first, second} <= set(method.tensors) and (
                tensors[first].shape[first_axis] != tensors[second].shape[second_axis]):
            raise PromptFileError(f"{path}: tensors '{first}' {tuple(tensors[first].shape)} and '{second}' "
                                  f"{tuple(tensors[second].shape)} do not fit together")
    names = tensors if method.more_tensors else method.tensors
    names = [*names, *(n for n in tensors if n.startswith("head.") and n not in names)]  # an encoder's head
    if meta.get("head") and not {"head.weight", "head.bias"} <= set(tensors):
        raise PromptFileError(f"{path}: metadata names a classification head but the file has no head tensors")
    out = {name: tensors[name].to(torch.float32) for name in names}
    broken = [name for name, tensor in out.items() if not bool(torch.isfinite(tensor).all())]
    if broken:
        raise PromptFileError(f"{path}: tensor(s) {broken} hold NaN or infinite values; retrain or restore the file")
    return out, meta


# tensor -> (dimensions, the axis that counts virtual tokens or None); tensors not named here are 2-D
_TOKEN_AXIS: dict[str, tuple[int, int | None]] = {"prompt_embeddings": (2, 0), "shared_prompt": (2, 0),
                                                  "prefix_keys": (4, 1), "prefix_values": (4, 1)}
# (tensor, axis, tensor, axis) that must be equal where a file holds both: DePT's A·B and its width
_AGREEING_AXES = (("text_offset_a", 1, "text_offset_b", 0), ("text_offset_b", 1, "prompt_embeddings", 1))

# metadata field -> the JSON types it may hold (absent is fine: older files, or a kind that has no such field)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "num_virtual_tokens": (int,), "max_length": (int,), "template": (str, type(None)), "task": (str,),
    "labels": (list, type(None)), "verbalizer": (dict, type(None)), "method": (str,)}
_BACKBONE_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "hidden_size": (int,), "fingerprint": (str,)}


def _check_fields(meta: dict[str, Any]) -> None:
    """Every metadata field a reader relies on has its type (a crafted `max_length: "abc"` is refused here)."""
    for where, fields, types in (("", meta, _FIELD_TYPES), ("backbone.", meta["backbone"], _BACKBONE_TYPES)):
        for name, allowed in types.items():
            if name in fields and (not isinstance(fields[name], allowed) or isinstance(fields[name], bool)):
                raise ValueError(f"metadata field '{where}{name}' holds {fields[name]!r}")
    if meta.get("task", "classification") not in {t.value for t in TaskType}:
        raise ValueError(f"metadata field 'task' holds {meta['task']!r}")
    if isinstance(meta.get("labels"), list) and not all(isinstance(label, str) for label in meta["labels"]):
        raise ValueError("metadata field 'labels' holds something other than label names")
    if isinstance(meta.get("max_length"), int) and not (meta["max_length"] == 0 or 8 <= meta["max_length"] <= 1 << 20):
        raise ValueError(f"metadata field 'max_length' holds {meta['max_length']}")


def check_compatible(meta: dict[str, Any], backbone: Backbone, path: str | Path = "prompt") -> None:
    """Refuse a prompt trained on another backbone: hidden size and weight fingerprint must match."""
    expected = meta["backbone"]  # read_prompt_tensors checked that it is an object
    if expected.get("hidden_size") != backbone.hidden_size:
        raise IncompatiblePromptError(
            f"{path} was trained on '{expected.get('name')}' (hidden size {expected.get('hidden_size')}); the loaded "
            f"backbone '{backbone.name}' has hidden size {backbone.hidden_size}", f"pass --model {expected.get('name')}")
    if expected.get("fingerprint") != backbone.fingerprint():
        raise IncompatiblePromptError(
            f"{path} was trained on '{expected.get('name')}' (fingerprint {expected.get('fingerprint')}); the loaded "
            f"backbone '{backbone.name}' has fingerprint {backbone.fingerprint()}", f"pass --model {expected.get('name')}")
