"""`softprompt sweep` on a tiny backbone: grid and TPE search, pruning, resuming, best.yaml, clear errors, and
workers sharing one study in a real PostgreSQL."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import system
from postgres import running_postgres

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


# Sweeps shared between workers through a real PostgreSQL server (Debian's postgresql, started for these tests).

STUDY = ["--lr", "3e-3,3e-1", "--num-virtual-tokens", "1,2,4", "--init", "vocab", "--budget-steps", "24",
         "--evals", "2", "--no-prune", "--batch-size", "4", "--eval-limit", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def postgres_url():
    system.require("postgresql")
    with running_postgres() as url:
        yield url


def _worker(out, model_dir, data_dir, url, study, *extra):
    """One `softprompt sweep` worker process on one core."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "softprompt", "sweep", "--model", model_dir, "--data",
                             str(data_dir), "--storage", url, "--study", study, "--output", str(out), *STUDY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _trials(url, study):
    import optuna

    return optuna.load_study(study_name=study, storage=url.replace("postgresql://", "postgresql+psycopg://")
                             ).get_trials(deepcopy=False)


def _point(trial):
    return trial.params.get("lr"), trial.params.get("num_virtual_tokens")


def test_two_workers_share_one_postgresql_study_and_no_trial_runs_twice(tmp_path, tiny_model_dir, sentiment_dir,
                                                                         postgres_url):
    workers = [_worker(tmp_path / f"w{i}", tiny_model_dir, sentiment_dir, postgres_url, "shared") for i in (1, 2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    trials = _trials(postgres_url, "shared")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6, logs
    assert len({_point(t) for t in trials}) == 6  # every grid point exactly once, none twice
    ran_by = {t.user_attrs["worker"].split(":")[1] for t in trials}
    assert ran_by == {str(w.pid) for w in workers}, (ran_by, logs)  # both workers took trials
    for i in (1, 2):  # each worker leaves only when the whole study is done, so both see all six
        assert len(json.loads((tmp_path / f"w{i}" / "sweep.json").read_text())["rows"]) == 6


def test_a_worker_killed_mid_trial_leaves_it_failed_and_another_worker_runs_it_again(
        tmp_path, tiny_model_dir, sentiment_dir, postgres_url):
    first = _worker(tmp_path / "w1", tiny_model_dir, sentiment_dir, postgres_url, "killed", "--heartbeat", "1")
    deadline, victim = time.monotonic() + 120, None
    while victim is None and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # the study may not exist yet
            victim = next((t for t in _trials(postgres_url, "killed") if t.state.name == "RUNNING"
                           and t.user_attrs.get("worker", "").endswith(f":{first.pid}")), None)
    assert victim is not None, first.communicate(timeout=10)[0] if first.poll() is not None else "no trial started"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = _worker(tmp_path / "w2", tiny_model_dir, sentiment_dir, postgres_url, "killed", "--heartbeat", "1")
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log
    assert f"trial {victim.number} (worker " in log and "stopped sending heartbeats" in log, log
    trials = {t.number: t for t in _trials(postgres_url, "killed")}
    assert trials[victim.number].state.name == "FAIL"
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert sorted(_point(t) for t in complete) == sorted({_point(t) for t in complete}) and len(complete) == 6
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and _point(retried[0]) == _point(victim)
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials.values())


def test_a_wrong_or_unreachable_storage_is_one_line(tmp_path, tiny_model_dir, sentiment_dir, capsys, postgres_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = [("mysql://root@db/sweeps", "give a postgresql:// URL"),
             (f"postgresql://sweeper:hunter2@127.0.0.1:{closed}/sweeps", "cannot open the database"),
             (postgres_url.rsplit("/", 1)[0] + "/no_such_database", "cannot open the database")]
    for url, message in cases:
        code = main(["sweep", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--storage", url,
                     "--output", str(tmp_path / "bad"), *STUDY])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (url, err)
        assert "hunter2" not in err  # the password is not printed
    assert main(["sweep", "--model", tiny_model_dir, "--data", str(sentiment_dir), "--storage", postgres_url,
                 "--heartbeat", "0", "--output", str(tmp_path / "bad"), *STUDY]) == 2
    assert "--heartbeat must be >= 1" in capsys.readouterr().err


def test_a_second_worker_on_one_journal_is_refused(tmp_path, tiny_model_dir, sentiment_dir):
    from softprompt.tools.sweep import open_storage

    out = tmp_path / "sweep"
    out.mkdir()
    _, lock = open_storage(out, None, "s", 60)
    try:
        with pytest.raises(ConfigError, match="another sweep is running .* --storage postgresql://"):
            sweep(_base(tiny_model_dir, sentiment_dir), parse_space("1e-2", "1", "vocab", "prefix"), out,
                  log=lambda _: None)
    finally:
        lock.close()
