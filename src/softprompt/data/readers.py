"""Readers for user data files (.jsonl, .csv, .tsv, .parquet) with row validation that names file, line and field.

A Parquet file has no lines: its rows are numbered from 1 in the same place (`train.parquet:17: field 'text'`)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import DataError

SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"undecodable bytes (not UTF-8) at byte {exc.start}; re-save the file as UTF-8",
                        path=str(path), line=line) from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict | DataError]]:
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028 and the like, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            yield number, DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=number)
            continue
        except _DuplicateKey as exc:
            yield number, DataError(f"the key '{exc}' appears twice in one object; keep one", path=str(path),
                                    line=number)
            continue
        except RecursionError:
            yield number, DataError("JSON nested too deeply to be a data row", path=str(path), line=number)
            continue
        if not isinstance(row, dict):
            yield number, DataError(f"expected a JSON object per line, got {type(row).__name__}",
                                    path=str(path), line=number)
            continue
        yield number, row


def _csv_rows(path: Path, text: str, delimiter: str = ",") -> Iterator[tuple[int, dict | DataError]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    try:
        reader.fieldnames  # the header first: records are then numbered from where each one starts
    except csv.Error as exc:
        yield 1, DataError(f"invalid CSV header ({exc}: look for an unclosed quote)", path=str(path), line=1)
        return
    while True:
        start = reader.line_num + 1  # where the next record begins (a quoted cell may span lines)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            where = f"; the record starting here runs to line {reader.line_num}" if reader.line_num > start else ""
            yield start, DataError(f"invalid CSV ({exc}{where}: look for an unclosed quote)", path=str(path),
                                   line=start)
            return  # the csv module cannot resynchronise after a broken quote
        if None in row:
            yield reader.line_num, DataError(f"invalid CSV (more cells than the header's "
                                             f"{len(reader.fieldnames or [])} columns; quote text with commas)",
                                             path=str(path), line=reader.line_num)
            continue
        yield reader.line_num, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    import pyarrow
    import pyarrow.parquet

    failures = (pyarrow.ArrowException, OSError, ValueError)  # ValueError: UnicodeDecodeError of a bad string
    try:
        table = pyarrow.parquet.read_table(path)
    except failures as exc:
        raise DataError(f"not a readable Parquet file ({_first_line(exc)})", path=str(path)) from None
    try:
        rows = table.to_pylist()
    except failures:  # one value will not convert: find its row
        for number in range(1, table.num_rows + 1):
            try:
                yield number, table.slice(number - 1, 1).to_pylist()[0]
            except failures as exc:
                yield number, DataError(f"unreadable value ({_first_line(exc)})", path=str(path), line=number)
        return
    yield from enumerate(rows, start=1)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def read_rows(path: str | Path, *, text_fields: Sequence[str], label_field: str | None,
              labels: Sequence[str] | None = None, skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Read and validate a .jsonl, .csv, .tsv or .parquet file.

    Each row must hold every text field (non-empty) and, when `label_field` is given, a label (one of
    `labels` when given). Returns (rows, number skipped). Without `skip_bad_rows` the first bad row raises a
    `DataError` naming file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    if path.suffix not in SUFFIXES:
        raise DataError(f"unsupported file type '{path.suffix}'; use {', '.join(SUFFIXES)}", path=str(path))
    if path.suffix == ".parquet":
        source: Iterable[tuple[int, dict | DataError]] = _parquet_rows(path)
    else:
        text = _decode(path)
        source = (_jsonl_rows(path, text) if path.suffix == ".jsonl"
                  else _csv_rows(path, text, "\t" if path.suffix == ".tsv" else ","))
    return validate_rows(source, str(path), text_fields=text_fields, label_field=label_field, labels=labels,
                         skip_bad_rows=skip_bad_rows)


def read_jsonl_text(text: str, origin: str = "<stdin>", **checks) -> tuple[list[dict], int]:
    """Validate JSONL rows held in a string (standard input); `checks` as for `read_rows`."""
    return validate_rows(_jsonl_rows(Path(origin), text), origin, **checks)


def validate_rows(source: Iterable[tuple[int, dict | DataError]], origin: str, *, text_fields: Sequence[str],
                  label_field: str | None, labels: Sequence[str] | None = None,
                  skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Check numbered rows from any reader (a file, a Hugging Face dataset split named by `origin`)."""
    path = Path(origin)
    rows, skipped = [], 0
    for number, row in source:
        error = row if isinstance(row, DataError) else _check_row(row, path, number, text_fields, label_field, labels)
        if error is not None:
            if not skip_bad_rows:
                raise error
            skipped += 1
            continue
        clean = {name: str(row[name]) for name in text_fields}
        if label_field is not None:
            clean[label_field] = str(row[label_field]).strip()
        rows.append(clean)
    if not rows:
        raise DataError("no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""), path=str(path))
    return rows, skipped


def _show(value: object) -> str:
    try:
        return json.dumps(value)[:40]
    except (TypeError, ValueError):  # bytes, dates and the like from Parquet or a dataset
        return repr(value)[:40]


def _check_row(row: dict, path: Path, line: int, text_fields: Sequence[str], label_field: str | None,
               labels: Sequence[str] | None) -> DataError | None:
    for name in list(text_fields) + ([label_field] if label_field else []):
        if name in row and row[name] is None:
            return DataError("null; give text (or drop the row, or pass --skip-bad-rows)", path=str(path), line=line,
                             field=name)
        if name not in row:
            return DataError(f"missing (the row has {sorted(row)}); fix the row or set --text-field/--label-field",
                             path=str(path), line=line, field=name)
        value = row[name]
        is_label = name == label_field
        if isinstance(value, (dict, list, bool)) or not (isinstance(value, str) or (is_label and
                                                                                  isinstance(value, (int, float)))):
            expected = "text (or a number, for a label)" if is_label else "text"
            return DataError(f"expected {expected}, got {type(value).__name__} {_show(value)}",
                             path=str(path), line=line, field=name)
        if isinstance(value, float) and not math.isfinite(value):
            return DataError(f"expected a label, got {value}", path=str(path), line=line, field=name)
        if not str(value).strip():
            return DataError("empty", path=str(path), line=line, field=name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return DataError("holds a lone surrogate (\\ud800-\\udfff), which is not a character; fix the row",
                                 path=str(path), line=line, field=name)
    if label_field and labels is not None and str(row[label_field]).strip() not in labels:
        return DataError(f"label '{row[label_field]}' is not in the label set {list(labels)}; fix the row or "
                         f"pass --labels", path=str(path), line=line, field=label_field)
    return None
