"""Coverage-guided fuzz target (atheris / libFuzzer): the data readers (.jsonl, .csv, .tsv, .parquet).

The first byte picks the format, the rest is the file. Every input is read into validated rows or refused with
a `DataError` naming the file -- any other exception, or a row that is not non-empty UTF-8 text, is a finding.

    python fuzz/data_rows.py fuzz/corpus/data_rows -max_total_time=60
"""

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["softprompt"]):
    from softprompt.data.readers import SUFFIXES, read_rows
    from softprompt.errors import DataError

FOLDER = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    suffix = SUFFIXES[data[0] % len(SUFFIXES)]
    path = FOLDER / f"rows{suffix}"
    path.write_bytes(data[1:])
    try:
        rows, skipped = read_rows(path, text_fields=("text",), label_field="label", skip_bad_rows=bool(data[0] & 0x80))
    except DataError as exc:
        assert str(exc).startswith(str(path)), exc
        return
    assert rows and skipped >= 0
    for row in rows:
        assert isinstance(row["text"], str) and row["text"].strip() and isinstance(row["label"], str)
        row["text"].encode("utf-8")  # no lone surrogate got through


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
