"""Coverage-guided fuzz target (atheris / libFuzzer): the prompt-file loader.

Whatever bytes a `.safetensors` file holds, `read_prompt_tensors` and `load_prompted_model` (on a tiny llama
backbone) return a usable prompt or raise the project's typed error -- any other exception is a finding.

    make fuzz                                                    # every target, a fixed budget each
    python fuzz/prompt_file.py fuzz/corpus/prompt_file -max_total_time=60
"""

import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny backbones built in-process

with atheris.instrument_imports(include=["softprompt"]):
    from softprompt.errors import SoftPromptError
    from softprompt.formats import read_prompt_tensors
    from softprompt.kinds import load_prompted_model

import tiny  # noqa: E402
import torch  # noqa: E402

BACKBONE = tiny.tiny_backbone("llama")
FOLDER = tempfile.mkdtemp(prefix="softprompt-fuzz-")
PATH = Path(FOLDER) / "fuzzed.safetensors"


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        tensors, meta = read_prompt_tensors(PATH)
        assert isinstance(meta, dict) and all(torch.isfinite(t).all() for t in tensors.values())
        model = load_prompted_model(PATH, BACKBONE)
    except SoftPromptError:
        return
    assert model.prompt.num_virtual_tokens >= 0


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        if PATH.exists():
            os.unlink(PATH)


if __name__ == "__main__":
    main()
