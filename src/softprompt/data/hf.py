"""Hugging Face `datasets` as a data source: a folder written by `save_to_disk`, or `hf:NAME[:CONFIG]` loaded by
`datasets.load_dataset` from the local cache or a local folder — never from the network (offline mode is forced).

Rows go through the same validation as data files; a bad row is named `NAME[split]:ROW: field 'text'`, rows
counted from 1. An integer label column with `ClassLabel` features is read as the label names.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

PREFIX = "hf:"
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    try:
        return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()
    except (OSError, ValueError):  # a name no file system holds (a NUL byte, too long)
        return False


def _datasets() -> Any:
    import datasets

    datasets.utils.logging.disable_progress_bar()
    return datasets


@contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Offline for the length of one load, whatever the environment said when the libraries were imported."""
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved


def load_splits(source: str) -> tuple[str, dict[str, tuple[str, Iterator[tuple[int, dict]]]]]:
    """Open `source` (`hf:NAME[:CONFIG]` or a saved-dataset folder). Returns (task name, {split: (origin, numbered
    rows)}) for the splits it holds among train / validation / test."""
    datasets = _datasets()
    if source.startswith(PREFIX) and not source[len(PREFIX):].partition(":")[0]:
        raise DataError("give a dataset name or folder after 'hf:'", path=source)
    try:
        with _offline(datasets):
            if source.startswith(PREFIX):
                name, _, config = source[len(PREFIX):].partition(":")
                loaded = datasets.load_dataset(name, config or None)
                label = name.rstrip("/").split("/")[-1]
            else:
                loaded = datasets.load_from_disk(source)
                name, label = source, Path(source).name
    except Exception as exc:  # noqa: BLE001 -- datasets raises many kinds (offline, missing, corrupt, ...)
        first = str(exc).splitlines()[0][:240] if str(exc) else type(exc).__name__
        hint = (" (offline: only datasets already in the Hugging Face cache or local folders load)"
                if source.startswith(PREFIX) else "")
        raise DataError(f"could not load the dataset: {first}{hint}", path=source) from None
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    found: dict[str, tuple[str, Iterator[tuple[int, dict]]]] = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in parts:
                found[split] = (f"{name}[{alias}]", _rows(parts[alias], datasets))
                break
    if not found:
        raise DataError(f"no train, validation or test split (it has {sorted(parts)})", path=source)
    return label, found


def _rows(dataset: Any, datasets: Any) -> Iterator[tuple[int, dict]]:
    names = {column: feature for column, feature in dataset.features.items()
             if isinstance(feature, datasets.ClassLabel)}
    for number, row in enumerate(dataset, start=1):
        for column, feature in names.items():
            value = row.get(column)
            if isinstance(value, int) and 0 <= value < feature.num_classes:
                row[column] = feature.int2str(value)
        yield number, row
