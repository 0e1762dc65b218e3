"""The first ten minutes of a newcomer: `make test` brings what the tests need, the last hostile inputs are one
line, and a command's output holds softprompt's lines only."""

import os
import re
import subprocess
import sys
from pathlib import Path

import system
import tiny

ROOT = Path(__file__).parents[2]


def _make_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}\s*:=\s*(.+)$", text, re.MULTILINE)
    assert match, f"the Makefile declares no {name}"
    return match.group(1).split()


def test_make_test_and_ci_install_the_same_system_packages():
    """One list: the Makefile's, which `make test` installs and tests/system.py knows how to find; `.ci/run`
    calls `make test` and installs nothing of its own, so CI and a newcomer cannot drift apart."""
    packages = _make_variable("SYSTEM_PACKAGES")
    assert sorted(packages) == sorted(system.PRESENT)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bsystem-packages\b", makefile, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci


def test_make_system_packages_says_what_to_install_where_it_cannot(tmp_path):
    """Not root (or no apt): one line naming every missing package, and make still succeeds."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dpkg").write_text("#!/bin/sh\nexit 1\n")      # every package looks missing
    (fake_bin / "id").write_text("#!/bin/sh\necho 1000\n")     # and we are not root
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    proc = subprocess.run(["make", "-s", "system-packages"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "apt-get install " + " ".join(_make_variable("SYSTEM_PACKAGES")) in lines[0]


def _cli(*args, **env_extra):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env_extra}
    return subprocess.run([sys.executable, "-m", "softprompt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_last_hostile_inputs_are_one_line_naming_the_flag_or_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text('text,label\n"a great film,positive\nboring,negative\n')
    cases = [
        (["train", "--data", "rotten_tomatoes", "--seed", "-1"], "--seed must be in 0..4,294,967,295"),
        (["train", "--data", "rotten_tomatoes", "--seed", str(2**32)], "--seed must be in 0..4,294,967,295"),
        (["train", "--data", "rotten_tomatoes", "--text-field", ","], "--text-field ',' names no field"),
        (["eval", "--prompt", tmp_path / "p.safetensors", "--text-field", " , "], "--text-field ' , ' names no field"),
        (["predict", "--prompt", tmp_path / "p.safetensors", "--seed", "-1", "text"], "--seed must be in 0..2**53"),
        (["train", "--train-file", data / "train.csv", "--output", tmp_path / "out"],
         f"{data / 'train.csv'}:2: invalid CSV (unexpected end of data"),
    ]
    for argv, expected in cases:
        proc = _cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


QUIET_CHILD = """
import sys
from softprompt.progress import quiet_third_party
quiet_third_party(verbose=sys.argv[1] == "verbose")
import deepspeed  # noqa: F401  (accelerate imports it where it is installed)
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[2])
"""


def test_third_party_chatter_is_quiet_unless_verbose(tmp_path):
    """DeepSpeed's accelerator guess (stdout) and transformers' weight-loading bar (stderr) are gone by default and
    come back with --verbose (so the check could fail)."""
    model_dir = tiny.save_tiny(tmp_path / "tiny", "llama")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "CI")}
    outputs = {}
    for mode in ("quiet", "verbose"):
        proc = subprocess.run([sys.executable, "-c", QUIET_CHILD, mode, model_dir], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs[mode] = proc.stdout + proc.stderr
    assert "Setting accelerator to CPU" not in outputs["quiet"] and "Loading weights" not in outputs["quiet"]
    assert "Setting accelerator to CPU" in outputs["verbose"] and "Loading weights" in outputs["verbose"]


def test_the_readme_verbs_are_the_cli_verbs():
    from softprompt.cli import _register, app

    _register()
    verbs = {command.name or command.callback.__name__ for command in app.registered_commands}
    verbs |= {group.name for group in app.registered_groups}
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"command-line tool \(`softprompt ([a-z|\s]+)`\)", readme)
    assert listed, "the README names its verbs as (`softprompt a | b | ...`)"
    assert set("".join(listed.group(1).split()).split("|")) == verbs


def test_the_builtin_backbones_table_lists_every_builtin_name():
    from softprompt.hub import builtin_names

    text = (ROOT / "docs" / "reference" / "files.md").read_text()
    table = text.split("<!-- builtins -->")[1].split("<!-- /builtins -->")[0]
    assert set(re.findall(r"^\| `([a-z0-9.\-]+)` \|", table, re.MULTILINE)) == set(builtin_names())
