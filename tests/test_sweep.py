"""`softprompt sweep` on a tiny backbone: grid and TPE search, pruning, resuming, best.yaml, clear errors."""

import json

import pytest

from softprompt import ConfigError, TrainConfig
from softprompt.cli import main
from softprompt.tools.sweep import parse_space, sweep


def _base(model_dir, data_dir):
    return TrainConfig(model=model_dir, data=str(data_dir), batch_size=4, eval_limit=0, precision="fp32",
                       device="cpu")


def test_grid_sweep_runs_every_combination_and_writes_a_usable_best_config(tmp_path, tiny_model_dir, sentiment_dir):
    out = tmp_path / "sweep"
    space = parse_space("1e-3,3e-1", "1,4", "random,labels", "prefix")
    rows = sweep(_base(tiny_model_dir, sentiment_dir), space, out, budget_steps=6, evals=3, log=lambda _: None)
    assert len(rows) == 8
    points = {(r["lr"], r["num_virtual_tokens"], r["init"]) for r in rows}
    assert len(points) == 8  # each combination once
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    assert any(r["state"] == "pruned" for r in rows) or all(r["last_step"] == 6 for r in rows)
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["space"]["lr"] == [1e-3, 3e-1] and len(saved["rows"]) == 8
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["score"])
    config = TrainConfig.from_sources(out / "best.yaml")  # what `train --config best.yaml` reads
    assert (config.lr, config.num_virtual_tokens, config.init.value) == (best["lr"], best["num_virtual_tokens"],
                                                                         best["init"])
    assert config.model == tiny_model_dir and config.batch_size == 4
    assert "| 1 |" in (out / "sweep.md").read_text()


def test_an_interrupted_sweep_continues_with_the_missing_trials(tmp_path, tiny_model_dir, sentiment_dir, monkeypatch):
    import softprompt.tools.sweep as training  # the module whose `train` each trial calls

    out = tmp_path / "sweep"
    space = parse_space("3e-2", "1,2,4", "random,vocab", "prefix")
    real_train, calls = training.train, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the third trial
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(_base(tiny_model_dir, sentiment_dir), space, out, budget_steps=4, evals=2, prune=False,
              log=lambda _: None)
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 2
    monkeypatch.setattr(training, "train", real_train)
    lines = []
    rows = sweep(_base(tiny_model_dir, sentiment_dir), space, out, budget_steps=4, evals=2, prune=False,
                 log=lines.append)
    assert "2 trial(s) done, 4 to run" in lines[0]
    assert len(rows) == 6 and len({(r["num_virtual_tokens"], r["init"]) for r in rows}) == 6
    assert all(r["state"] == "complete" for r in rows)
    again = sweep(_base(tiny_model_dir, sentiment_dir), space, out, budget_steps=4, evals=2, prune=False,
                  log=lambda _: None)
    assert len(again) == 6  # nothing left to run


def test_tpe_search_and_cli(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    out = tmp_path / "tpe"
    code = main(["sweep", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--lr", "1e-2,1e-1",
                 "--num-virtual-tokens", "1,3", "--init", "vocab,labels", "--search", "tpe", "--trials", "3",
                 "--budget-steps", "4", "--evals", "2", "--batch-size", "4", "--eval-limit", "0", "--precision",
                 "fp32", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "best config:" in printed and "| rank |" in printed
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 3
    bad = [(["--lr", "fast"], "not a valid float"), (["--init", "zeros"], "not one of"),
           (["--num-virtual-tokens", "0"], "must be >= 1"), (["--search", "tpe"], "needs --trials"),
           (["--lr", "1e-2,1e-2"], "twice"), (["--budget-steps", "0"], "budget-steps")]
    for args, message in bad:
        assert main(["sweep", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--output",
                     str(tmp_path / "bad"), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    with pytest.raises(ConfigError, match="another --output"):
        sweep(_base(tiny_model_dir, sentiment_dir), parse_space("1e-2", "1", "vocab", "prefix"), out,
              search="tpe", trials=1, log=lambda _: None)
