"""The CLI as a user runs it: subprocesses, JSON on stdout, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import tiny


def run(*args, cwd=None, **env_extra):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env_extra}
    return subprocess.run([sys.executable, "-m", "softprompt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cli")
    from rows import make_sentiment_dir
    data = make_sentiment_dir(root / "data", train_repeats=3)
    (root / "run.yaml").write_text("batch-size: 4\neval-every: 2\nprecision: fp32\n")
    out = root / "run"
    proc = run("train", "--model", tiny_model_dir, "--data", data, "--output", out, "--num-virtual-tokens", 6,
               "--init", "labels", "--label-words", "positive=great,good", "--label-words", "negative=bad",
               "--max-steps", 4, "--config", root / "run.yaml", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return root, data, out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_writes_the_run(trained):
    root, _, out, summary = trained
    assert summary["steps"] == 4 and "accuracy" in summary["validation"]
    assert {"prompt.safetensors", "metrics.jsonl", "training.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    config = (out / "config.yaml").read_text()
    assert "batch_size: 4" in config and "eval_every: 2" in config  # from --config
    assert "num_virtual_tokens: 6" in config


def test_eval_prints_one_json_object(trained, tiny_model_dir):
    _, data, out, _ = trained
    proc = run("eval", "--prompt", out / "prompt.safetensors", "--data", data, "--split", "test", "--limit", 5,
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 5 and result["split"] == "test"
    # The accuracy is the share of the first five test rows the loaded prompt labels right, counted here.
    import softprompt as sp

    model = sp.load_prompted_model(out / "prompt.safetensors", sp.load_backbone(tiny_model_dir, dtype="fp32"))
    rows = sp.load_task(str(data)).test[:5]
    right = sum(p == r["label"] for p, r in zip(model.classify([{"text": r["text"]} for r in rows]), rows))
    assert result["accuracy"] == pytest.approx(right / 5)


def test_predict_and_info(trained):
    _, _, out, _ = trained
    proc = run("predict", "--prompt", out / "prompt.safetensors", "a great film", "boring")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines()] and set(proc.stdout.split()) <= {"positive", "negative"}
    assert len(proc.stdout.split()) == 2
    proc = run("info", out / "prompt.safetensors")
    assert proc.returncode == 0 and "fingerprint" in proc.stdout and "6 virtual tokens" in proc.stdout
    assert "positive=great/good" in proc.stdout


def test_user_mistakes_are_one_line_and_exit_2(trained, tmp_path):
    root, data, out, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "ok", "label": "a"}\n{"text": "ok", "label": "b"}\n{"text": ""}\n')
    proc = run("train", "--model", "unused", "--data", bad, "--output", tmp_path / "x", "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{bad / 'train.jsonl'}:3: field 'text': empty" in proc.stderr
    assert not (tmp_path / "x").exists()

    other = tiny.save_tiny(tmp_path / "other", "llama", seed=5)
    proc = run("eval", "--prompt", out / "prompt.safetensors", "--data", data, "--model", other)
    assert proc.returncode == 2 and "fingerprint" in proc.stderr and proc.stderr.count("\n") == 1

    proc = run("train", "--data", data, "--lr", "-1")
    assert proc.returncode == 2 and "--lr must be > 0" in proc.stderr

    proc = run("info", tmp_path / "missing.safetensors")
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_readme_options_table_is_generated_from_the_declarations():
    """Each option is declared once (config.py); the docs' options table must be what the declarations generate."""
    from pathlib import Path

    from softprompt.cli.options import readme_block

    readme = (Path(__file__).parents[2] / "docs" / "guides" / "train.md").read_text()
    assert readme_block() in readme, "docs options table drifted: run `python -m softprompt.cli.options --write " \
                                     "docs/guides/train.md`"


def test_every_option_is_a_flag_in_its_help_panel():
    import re

    from softprompt.config import GROUPS, option_names

    proc = run("train", "--help", COLUMNS="240")
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"\s+", " ", proc.stdout)
    for name in option_names():
        assert "--" + name.replace("_", "-") in text, name
    for title in GROUPS.values():
        assert title.split(" (")[0] in text, title
    assert "[default: (0.03)]" in text and "[soft:N]" in text  # defaults shown, no markup eaten


def test_a_runs_own_config_yaml_reproduces_it(trained, tmp_path, tiny_model_dir):
    """`train --config RUN/config.yaml` (its resolved section ignored) trains the same prompt again."""
    from safetensors.torch import load_file

    root, data, out, summary = trained
    again = tmp_path / "again"
    proc = run("train", "--config", out / "config.yaml", "--output", again, "--quiet")
    assert proc.returncode == 0, proc.stderr
    first, second = load_file(out / "prompt.safetensors"), load_file(again / "prompt.safetensors")
    assert all(__import__("torch").equal(first[k], second[k]) for k in first)


def test_yaml_options_nest_by_group_and_wrong_types_are_one_line(tmp_path):
    from softprompt.config import TrainConfig
    from softprompt.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("data: x\nvpt:\n  deep: true\nmpt:\n  rank: 3\ncoop:\n  class_token_position: front\n")
    config = TrainConfig.from_sources(path)
    assert config.vpt.deep and config.mpt.rank == 3 and config.coop.class_token_position == "front"
    for text, message in (("lr: fast", "--lr 'fast': expected a number"),
                          ("batch_size: 2.5", "--batch-size 2.5: expected a whole number"),
                          ("warmup_ratio: lots", "--warmup-ratio 'lots'"), ("max_steps: three", "--max-steps 'three'"),
                          ("lr: .inf", "--lr inf: give a finite number"), ("backbone_dtype: x", "unknown option")):
        path.write_text(f"data: x\n{text}\n")
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            TrainConfig.from_sources(path)


VERBS = ("train", "eval", "predict", "info", "explain", "export", "import-peft", "compare", "sweep", "serve")


@pytest.mark.parametrize("argv", [
    *[[verb, "--bogus"] for verb in VERBS],
    ["trian"], ["train", "--lr", "abc", "--data", "x"], ["train", "--placement", "middle", "--data", "x"],
    ["train", "--max-steps", "2.5", "--data", "x"], ["train", "--data", "x", "--device", "cuda:0"],
    ["train", "--data", "x", "--device", "gpu"], ["train", "--data", "x", "--device", "banana"],
    ["train", "--data", "x", "--lr", "inf"], ["train"], ["eval"], ["predict"], ["info"], ["export"],
    ["info", "/no/such/prompt.safetensors"], ["predict", "--prompt", "/no/such.safetensors", "text"],
    ["serve", "--prompts", "/no/such/folder"], ["train", "--config", "/no/such.yaml", "--data", "x"],
], ids=lambda argv: " ".join(argv))
def test_every_usage_mistake_is_one_line_and_exit_2(argv, capsys):
    from softprompt.cli import main

    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("softprompt: error: "), err
    assert "Traceback" not in err + out


def test_version_help_and_a_yaml_mistake_need_no_traceback(tmp_path):
    from softprompt import __version__

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"softprompt {__version__}"
    proc = run()
    assert proc.returncode == 0 and "train" in proc.stdout and not proc.stderr
    (tmp_path / "c.yaml").write_text('data: x\nmax_steps: "three"\n')
    proc = run("train", "--config", tmp_path / "c.yaml")
    assert proc.returncode == 2 and proc.stderr.strip() == "softprompt: error: --max-steps 'three': expected a " \
                                                           "whole number or null"


def test_a_log_gets_lines_not_progress_bar_frames(trained, tmp_path, tiny_model_dir):
    """stderr redirected to a file: one line per stage, no carriage-return frames."""
    root, data, _, _ = trained
    proc = run("train", "--model", tiny_model_dir, "--data", data, "--output", tmp_path / "r", "--max-steps", 4,
               "--eval-every", 2, "--batch-size", 4, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "softprompt: step 2/4: loss" in proc.stderr and "softprompt: step 4/4" in proc.stderr
    proc = run("eval", "--prompt", tmp_path / "r" / "prompt.safetensors", "--data", data, "--model", tiny_model_dir)
    assert proc.returncode == 0 and "\r" not in proc.stderr


def test_predict_reads_standard_input_and_data_may_be_tsv(trained, tmp_path, tiny_model_dir):
    root, data, out, _ = trained
    proc = subprocess.run([sys.executable, "-m", "softprompt", "predict", "--prompt", str(out / "prompt.safetensors"),
                           "-"], input="a great film\n\nboring\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 2 and set(proc.stdout.split()) <= {"positive", "negative"}
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    for split in ("train", "validation", "test"):
        (tsv / f"{split}.tsv").write_text("text\tlabel\n" + "a great, fine film\tpositive\nboring\tnegative\n" * 4)
    proc = run("eval", "--prompt", out / "prompt.safetensors", "--data", tsv, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 8


def test_option_groups_nest_and_flat_names_still_work():
    """Each method's and kind's options live in their own group (`config.vpt.deep`); flat names (flags, YAML,
    keywords, checkpoints written before the groups) still build the same config."""
    from softprompt.config import TrainConfig
    from softprompt.kinds.vision.options import VPTOptions
    from softprompt.errors import ConfigError

    config = TrainConfig(data="x", vpt_deep=True, mpt_rank=2, head_lr=0.01)
    assert config.vpt == VPTOptions(deep=True) and config.mpt.rank == 2 and config.head_lr == 0.01
    nested = config.to_dict()
    assert nested["vpt"] == {"deep": True} and nested["mpt"]["rank"] == 2 and "vpt_deep" not in nested
    assert TrainConfig(**nested) == config
    assert TrainConfig(data="x", vpt={"deep": True}, mpt={"rank": 2}, head_lr=0.01) == config
    assert config.replace(mpt_rank=4).mpt.rank == 4 and config.replace(vpt=VPTOptions()).vpt.deep is False
    for bad, message in (({"vpt": {"deeep": True}}, "unknown option 'vpt.deeep'"), ({"bogus": 1}, "unknown option"),
                         ({"mpt_rank": 0}, "--mpt-rank must be >= 1"), ({"vpt": 3}, "takes a mapping")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(data="x", **bad)


def test_predict_labels_a_whole_file(trained, tmp_path):
    root, data, out, _ = trained
    rows = tmp_path / "rows.csv"
    rows.write_text("text\na great film\nboring\n\"dull, far too long\"\n")
    proc = run("predict", "--prompt", out / "prompt.safetensors", "--input", rows)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["row"] for line in lines] == [1, 2, 3] and lines[1]["text"] == "boring"
    assert all(line["label"] in ("positive", "negative") and set(line["scores"]) == {"positive", "negative"}
               for line in lines)
    target = tmp_path / "labelled.jsonl"
    proc = subprocess.run([sys.executable, "-m", "softprompt", "predict", "--prompt", str(out / "prompt.safetensors"),
                           "--input", "-", "--output", str(target)], input='{"text": "a great film"}\n{"text": "boring"}\n',
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not proc.stdout
    assert [json.loads(line)["text"] for line in target.read_text().splitlines()] == ["a great film", "boring"]
    rows.write_text("text\na great film\n\"unclosed\n")
    proc = run("predict", "--prompt", out / "prompt.safetensors", "--input", rows)
    assert proc.returncode == 2 and proc.stderr.startswith(f"softprompt: error: {rows}:3: invalid CSV")
    for argv in (["--input", rows, "text"], ["--output", target, "text"], ["--input", rows, "--output", tmp_path],
                 []):
        proc = run("predict", "--prompt", out / "prompt.safetensors", *argv)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_an_output_path_through_a_file_is_refused_before_any_work(trained, tmp_path):
    root, data, _, _ = trained
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for output in (blocker, blocker / "run"):
        proc = run("train", "--model", "/no/such/model", "--data", data, "--output", output)
        assert proc.returncode == 2 and "is a file" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert blocker.read_text() == "mine"


def test_shell_completion_completes_verbs_and_flags():
    proc = run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert proc.returncode == 0 and "_softprompt_completion" in proc.stdout
    proc = run(_SOFTPROMPT_COMPLETE="complete_bash", COMP_WORDS="softprompt tr", COMP_CWORD="1")
    assert proc.returncode == 0 and proc.stdout.split() == ["train"]
    proc = run(_SOFTPROMPT_COMPLETE="complete_bash", COMP_WORDS="softprompt train --num-v", COMP_CWORD="2")
    assert proc.stdout.split() == ["--num-virtual-tokens"]


def test_the_demo_figure_in_the_readme_is_the_one_make_demo_compares_with():
    from pathlib import Path

    root = Path(__file__).parents[2]
    line = next(line for line in (root / "Makefile").read_text().splitlines()
                if line.startswith("DEMO_README_ACCURACY"))
    readme = " ".join((root / "README.md").read_text().split())
    figures = line.split(":=")[1].strip().split(", ")  # "85.8% on an AMD EPYC ...", "84.5% on an Intel Xeon with AMX"
    assert figures[0].split()[0] + " on 1,000 test reviews" in readme
    for figure in figures:
        accuracy, cpu = figure.split(" on an ")
        assert f"{accuracy} on 1,000 test reviews on a 2-core {cpu}" in readme or f"and {accuracy} on a 2-core {cpu}" \
            in readme, figure


def test_the_getting_started_page_says_what_the_readme_says_about_the_two_commands():
    """The paragraph on `make install` / `make demo` (durations, the demo's figures) is the same on both pages."""
    from pathlib import Path

    root = Path(__file__).parents[2]

    def paragraph(path):
        text = " ".join((root / path).read_text().split())
        start = text.index("On a 2-core CPU `make install` takes")
        return text[start:text.index("with `--no-deps`).", start)]

    assert paragraph("README.md") == paragraph("docs/getting-started.md")
