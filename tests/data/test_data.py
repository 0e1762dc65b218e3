

import pytest
import system
import torch
from rows import write_jsonl

from softprompt import DataError, load_task
from softprompt.data import BUILTIN_DATASETS


def _load(folder, **kw):
    return load_task(str(folder), **kw)


@pytest.mark.parametrize("line, needle, field", [
    ('{"label": "positive"}', "missing", "text"),
    ('{"text": "   ", "label": "positive"}', "empty", "text"),
    ('{"text": "fine film"}', "missing", "label"),
    ('{"text": "fine film", "label": "neutral"}', "not in the label set", "label"),
    ('{"text": "fine film", "label": "positive"', "invalid JSON", None),
    ('["fine film", "positive"]', "JSON object", None),
    ('{"text": {"a": 1}, "label": "positive"}', "expected text", "text"),
])
def test_bad_jsonl_rows_name_file_line_field(tmp_path, line, needle, field):
    good = '{"text": "a fine film", "label": "positive"}\n{"text": "a bad film", "label": "negative"}\n'
    (tmp_path / "train.jsonl").write_text(good)
    bad = tmp_path / "validation.jsonl"
    bad.write_text(good + line + "\n")
    with pytest.raises(DataError) as info:
        _load(tmp_path)
    message = str(info.value)
    assert f"{bad}:3" in message and needle in message
    if field:
        assert f"field '{field}'" in message
    task = _load(tmp_path, skip_bad_rows=True)
    assert task.skipped_rows == 1 and len(task.validation) == 2


def test_undecodable_bytes(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "ok", "label": "b"}\n'
                                           b'{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:3: undecodable bytes"):
        _load(tmp_path)


def test_csv_rows_and_errors(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"good, really",positive\nawful,negative\n')
    task = _load(tmp_path, validation_fraction=0)
    assert task.train[0] == {"text": "good, really", "label": "positive"} and task.labels == ("negative", "positive")
    (tmp_path / "test.csv").write_text("text,label\nfine,positive\nfine,too,many\n")
    with pytest.raises(DataError, match=r"test.csv:3: invalid CSV"):
        _load(tmp_path)
    (tmp_path / "test.csv").write_text('text,label\n"unterminated,positive\n')
    with pytest.raises(DataError, match=r"test.csv:\d+: invalid CSV"):
        _load(tmp_path)
    (tmp_path / "test.csv").write_text("text,label\n,positive\n")
    with pytest.raises(DataError, match=r"test.csv:2: field 'text': empty"):
        _load(tmp_path)


def test_folder_without_validation_holds_out_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(50)])
    task = _load(tmp_path)
    assert len(task.validation) == 5 and len(task.train) == 45
    assert not {r["text"] for r in task.validation} & {r["text"] for r in task.train}


def test_generation_task_fields(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "2+2", "target": "4"}] * 4)
    task = load_task(str(tmp_path), task="generation", text_fields=("question",))
    assert task.labels is None and task.label_field == "target"
    assert task.default_template == "{question}\n{target}"


def test_builtin_datasets_have_documented_splits():
    rt = load_task("rotten_tomatoes")
    assert (len(rt.train), len(rt.validation), len(rt.test)) == (9752, 1000, 2000)
    assert rt.labels == ("negative", "positive")
    assert not {r["text"] for r in rt.test} & {r["text"] for r in rt.train}
    assert load_task("rotten_tomatoes").test == rt.test  # fixed split
    bbc = load_task("bbc_news")
    assert (len(bbc.train), len(bbc.validation), len(bbc.test)) == (1558, 223, 444)
    assert bbc.labels == ("business", "entertainment", "politics", "sports", "tech")
    from softprompt.data.builtin import CHAT_LANGUAGES

    assert set(BUILTIN_DATASETS) == {"rotten_tomatoes", "bbc_news", "chatterbot-language", "fashion-mnist",
                                     "fashion-mnist-0-4", "fashion-mnist-5-9", "speech-commands-synth"} | {
        f"chatterbot-{language}" for language in CHAT_LANGUAGES}


def test_chatterbot_topics_share_one_label_set_across_languages():
    english, japanese = load_task("chatterbot-english"), load_task("chatterbot-japanese")
    assert (len(english.train), len(english.validation), len(english.test)) == (1134, 241, 241)
    assert len(english.labels) == 18 and set(japanese.labels) <= set(english.labels)
    assert set(load_task("chatterbot-german").labels) < set(english.labels)  # fewer topics, the same names
    texts = [{r["text"] for r in split} for split in (english.train, english.validation, english.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert {r["language"] for r in japanese.test} == {"japanese"}
    language = load_task("chatterbot-language")
    assert "english" in language.labels and "thai" not in language.labels  # thai has < 100 messages
    assert load_task("chatterbot-english").test == english.test  # fixed split


def test_fashion_mnist_halves_and_idx_reader():
    from softprompt.data.images import FASHION_CLASSES

    system.require("dataset-fashion-mnist")
    low, high = load_task("fashion-mnist-0-4"), load_task("fashion-mnist-5-9")
    assert (len(high.train), len(high.validation), len(high.test)) == (27000, 3000, 5000)
    assert set(low.labels) == set(FASHION_CLASSES[:5]) and set(high.labels) == set(FASHION_CLASSES[5:])
    image = high.train[0]["image"]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and int(image.max()) > 0
    assert high.text_fields == ("image",)


@pytest.mark.parametrize("name, text, message", [
    ("num.jsonl", '{"text": 42, "label": "x"}\n', "1: field 'text': expected text, got int 42"),
    ("dup.jsonl", '{"text": "hi", "label": "x", "label": "y"}\n', "1: the key 'label' appears twice"),
    ("deep.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "x"}\n', "1: JSON nested too deeply"),
    ("surrogate.jsonl", '{"text": "\\ud800", "label": "x"}\n', "1: field 'text': holds a lone surrogate"),
    ("quote.csv", 'text,label\n"fine",a\n"open quote,b\nmore,c\nrows,d\n', "3: invalid CSV (unexpected end of data"),
], ids=lambda value: value if isinstance(value, str) and value.endswith(("l", "v")) else "")
def test_hostile_rows_are_named_by_file_line_and_field(tmp_path, name, text, message):
    from softprompt.data.readers import read_rows

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_rows(path, text_fields=("text",), label_field="label")
    assert str(info.value).startswith(f"{path}:") and message in str(info.value)


def test_legal_json_lines_are_read_whole(tmp_path):
    """A raw U+2028 is legal inside a JSON string: it must not cut the line; a numeric label is a label."""
    from softprompt.data.readers import read_rows

    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "one\u2028two", "label": 1}\n{"text": "three", "label": 0}\n', encoding="utf-8")
    rows, skipped = read_rows(path, text_fields=("text",), label_field="label")
    assert rows == [{"text": "one\u2028two", "label": "1"}, {"text": "three", "label": "0"}] and skipped == 0


def _sentiment_rows(n: int = 3) -> dict[str, list[str]]:
    return {"text": ["a fine, moving film", "dull and far too long"] * n, "label": ["positive", "negative"] * n}


def test_parquet_splits_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(_sentiment_rows()), tmp_path / "train.parquet")
    (tmp_path / "test.csv").write_text("text,label\nfine,positive\nawful,negative\n")  # formats mix in one folder
    task = _load(tmp_path, validation_fraction=0)
    assert task.train[0] == {"text": "a fine, moving film", "label": "positive"} and len(task.test) == 2
    pq.write_table(pa.table({"text": ["ok", None, "ok"], "label": ["positive", "negative", "negative"]}),
                   tmp_path / "validation.parquet")
    with pytest.raises(DataError, match=r"validation.parquet:2: field 'text': null"):
        _load(tmp_path)
    assert len(_load(tmp_path, skip_bad_rows=True).validation) == 2
    pq.write_table(pa.table({"text": [b"bytes", b"x"], "label": [1.5, float("nan")]}), tmp_path / "validation.parquet")
    with pytest.raises(DataError, match=r"validation.parquet:1: field 'text': expected text, got bytes"):
        _load(tmp_path)
    (tmp_path / "validation.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"validation.parquet: not a readable Parquet file"):
        _load(tmp_path)


def test_hugging_face_datasets_saved_folders_and_hf_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"text": ["a fine film", "dull", "moving", "too long"], "label": [1, 0, 1, 0]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                          "test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(saved)
    task = load_task(str(saved))
    assert task.name == "saved" and task.labels == ("negative", "positive")  # ClassLabel ids read as names
    assert {"text": "a fine film", "label": "positive"} in task.train + task.validation and len(task.test) == 4
    bad = tmp_path / "bad"
    datasets.Dataset.from_dict({"text": ["fine", ""], "label": ["positive", "negative"]}).save_to_disk(bad)
    with pytest.raises(DataError, match=r"bad\[train\]:2: field 'text': empty"):
        load_task(str(bad))

    folder = tmp_path / "plain"  # hf:NAME goes through datasets.load_dataset (a local folder here)
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(f'{{"text": "{t}", "label": "{lab}"}}\n'
                                                for t, lab in zip(rows["text"], ["positive", "negative"] * 2)))
    task = load_task(f"hf:{folder}")
    assert task.name == "plain" and len(task.train) + len(task.validation) == 4
    with pytest.raises(DataError, match=r"hf:no-such-dataset-here: could not load the dataset.*offline"):
        load_task("hf:no-such-dataset-here")  # never a download
    with pytest.raises(DataError, match="after 'hf:'"):
        load_task("hf:")
