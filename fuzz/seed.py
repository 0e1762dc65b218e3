"""Write the seed corpus: one valid input per format (run once; the fuzzers add what they find beside them)."""

import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import tiny  # noqa: E402

from softprompt import PromptedModel, SoftPrompt, Verbalizer, build_template, save_prompt  # noqa: E402
from softprompt.data.readers import SUFFIXES  # noqa: E402

ROWS = {
    ".jsonl": b'{"text": "a fine film", "label": "positive"}\n{"text": "dull", "label": "negative"}\n',
    ".csv": b'text,label\n"a fine, film",positive\ndull,negative\n',
    ".tsv": b"text\tlabel\na fine film\tpositive\ndull\tnegative\n",
}


def main() -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a fine film", "dull"], "label": ["positive", "negative"]}), buffer)
    rows = {**ROWS, ".parquet": buffer.getvalue()}
    for suffix, raw in rows.items():
        (HERE / "corpus" / "data_rows" / f"seed{suffix.replace('.', '-')}").write_bytes(
            bytes([SUFFIXES.index(suffix)]) + raw)
    torch.manual_seed(0)
    backbone = tiny.tiny_backbone("llama")
    for name, template, placement in [("prefix", "{text} {label}", "prefix"),
                                      ("template", "[soft:2] Review: {text} [soft:1] Sentiment: {label}", "template")]:
        model = PromptedModel(backbone, SoftPrompt(torch.randn(3, backbone.hidden_size) * 0.1),
                              build_template(template, placement, 3), Verbalizer.from_spec(["negative", "positive"]))
        save_prompt(HERE / "corpus" / "prompt_file" / f"seed-{name}", model)


if __name__ == "__main__":
    main()
