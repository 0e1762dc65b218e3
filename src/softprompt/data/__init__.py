"""Task data: built-in datasets, a folder of split files, a Hugging Face dataset, or explicit files -> validated
splits."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from . import hf
from .builtin import BUILTIN_DATASETS, BuiltinDataset
from .readers import SUFFIXES, read_rows, validate_rows

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class TaskData:
    """Validated splits of one task. `labels` is None for generation tasks."""

    name: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    labels: tuple[str, ...] | None
    text_fields: tuple[str, ...]
    label_field: str
    default_template: str
    skipped_rows: int = 0

    def split(self, name: str) -> list[dict]:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"--split {name}: use train, validation or test")
        rows = getattr(self, name)
        if not rows:
            raise DataError(f"task '{self.name}' has no {name} split; give --{name}-file")
        return rows


def _find_split(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def load_task(data: str | None = None, *, train_file: str | None = None, validation_file: str | None = None,
              test_file: str | None = None, task: str = "classification", text_fields: Sequence[str] = ("text",),
              label_field: str | None = None, labels: Sequence[str] | None = None,
              skip_bad_rows: bool = False, validation_fraction: float = 0.1) -> TaskData:
    """Load a task by built-in name, folder of `train/validation/test` files (.jsonl, .csv, .tsv, .parquet), a
    Hugging Face dataset (`hf:NAME[:CONFIG]` from the local cache, or a `save_to_disk` folder), or explicit files.

    Examples:
        >>> task = load_task("rotten_tomatoes")          # doctest: +SKIP
        >>> len(task.train), task.labels                  # doctest: +SKIP
        (9752, ('negative', 'positive'))
    """
    classification = task == "classification"
    label_field = label_field or ("label" if classification else "target")
    if data in BUILTIN_DATASETS and not any((train_file, validation_file, test_file)):
        return _load_builtin(BUILTIN_DATASETS[data], labels)
    files: dict[str, Path | None] = {"train": None, "validation": None, "test": None}
    name = data or "custom"
    dataset: dict[str, tuple[str, Any]] = {}
    if data is not None and (data.startswith(hf.PREFIX) or hf.is_saved_dataset(Path(data))):
        name, dataset = hf.load_splits(data)
    elif data is not None:
        folder = Path(data)
        if not folder.is_dir():
            raise ConfigError(f"--data {data}: not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), a folder "
                              f"holding train/validation/test {', '.join(SUFFIXES)} files, a saved Hugging Face "
                              f"dataset folder, nor hf:NAME")
        files = {split: _find_split(folder, split) for split in files}
        name = folder.name
    for split, given in (("train", train_file), ("validation", validation_file), ("test", test_file)):
        if given is not None:
            files[split] = Path(given)
            dataset.pop(split, None)
    if not any(files.values()) and not dataset:
        raise ConfigError("no data: give --data NAME_OR_FOLDER or --train-file/--validation-file/--test-file")

    fields = tuple(text_fields)
    skipped = 0
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    label_set = tuple(labels) if labels else None
    for split in ("train", "validation", "test"):  # train first: it defines the label set
        checks = dict(text_fields=fields, label_field=label_field, labels=label_set if classification else None,
                      skip_bad_rows=skip_bad_rows)
        if split in dataset:
            origin, numbered = dataset[split]
            rows, bad = validate_rows(numbered, origin, **checks)
        elif files[split] is not None:
            rows, bad = read_rows(files[split], **checks)
        else:
            continue
        splits[split], skipped = rows, skipped + bad
        if classification and label_set is None:
            label_set = tuple(sorted({row[label_field] for row in rows}))
    if not splits["validation"] and splits["train"] and validation_fraction > 0:
        rows = list(splits["train"])
        random.Random(0).shuffle(rows)
        cut = max(1, int(len(rows) * validation_fraction))
        splits["validation"], splits["train"] = rows[:cut], rows[cut:]
    if classification and label_set is not None and len(label_set) < 2:
        raise DataError(f"classification needs at least 2 labels, found {list(label_set)} in field '{label_field}'",
                        path=str(files["train"] or files["test"] or files["validation"] or data))
    default = (" ".join(f"{{{f}}}" for f in fields) + ("\nLabel: {label}" if classification else "\n{target}"))
    return TaskData(name, splits["train"], splits["validation"], splits["test"],
                    label_set if classification else None, fields, label_field, default, skipped)


def _load_builtin(spec: BuiltinDataset, labels: Sequence[str] | None) -> TaskData:
    splits = spec.loader()
    found = tuple(sorted({row["label"] for rows in splits.values() for row in rows}))
    if labels and set(labels) != set(found):
        raise ConfigError(f"--labels {list(labels)} do not match {spec.name}'s labels {list(found)}")
    return TaskData(spec.name, splits["train"], splits["validation"], splits["test"], tuple(labels or found),
                    spec.fields, "label", spec.default_template)


__all__ = ["BUILTIN_DATASETS", "TaskData", "load_task", "read_rows"]
