"""`softprompt sweep`: learning rate x prompt length x initialisation (x placement), searched with optuna.

Every trial trains a prompt at the same step budget, data order and validation set on one loaded backbone;
its score is the best validation metric (accuracy for classification). `search="grid"` tries every
combination (queued in a seeded shuffled order); `"random"` and `"tpe"` draw `trials` of them. A median pruner stops
trials whose validation score at an evaluation is below the median of earlier trials at the same step.
The study lives in `DIR/study.journal` (optuna's journal storage, one worker at a time), so a sweep killed midway
continues where it stopped when run again with the same output folder: finished trials are kept and a grid runs the
ones still missing (the one that was running included). With `storage="postgresql://..."` (optuna's RDB storage)
any number of workers, on any machines, share one study: each claims the next trial under a PostgreSQL advisory
lock, so no trial runs twice; a worker that dies mid-trial stops sending heartbeats, and after two heartbeat
intervals another worker marks its trial failed and runs it again. A worker leaves when nothing is left to claim and
no other worker's trial is still running. Writes `sweep.json`, `sweep.md`, `sweep.png` (best validation score vs prompt
length, one line per initialisation) and `best.yaml` (usable with `softprompt train --config`).

    softprompt sweep --data rotten_tomatoes --lr 3e-3,3e-2,3e-1 --num-virtual-tokens 1,5,20,100 \\
        --init random,vocab,labels --budget-steps 60 --output runs/sweep
    # the same command on every machine, one study in PostgreSQL:
    softprompt sweep ... --storage postgresql://sweeps:secret@db.internal:5432/sweeps --study rt-lr-length
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..config import TrainConfig
from ..data import load_task
from ..errors import ConfigError
from ..evaluation import primary_metric
from ..formats import atomic_write
from ..hub import load_backbone, resolve_precision
from ..prompts import PromptInit
from ..template import Placement
from ..training import train
from ..training.guard import TrainingDivergedError

SEARCHES = ("grid", "random", "tpe")
STUDY_NAME = "softprompt-sweep"
HEARTBEAT_SECONDS = 60


@dataclass(frozen=True)
class SweepSpace:
    """The values each swept option takes (one value = held fixed)."""

    lr: tuple[float, ...]
    num_virtual_tokens: tuple[int, ...]
    init: tuple[str, ...]
    placement: tuple[str, ...]

    def as_grid(self) -> dict[str, list]:
        return {"lr": list(self.lr), "num_virtual_tokens": list(self.num_virtual_tokens), "init": list(self.init),
                "placement": list(self.placement)}

    @property
    def size(self) -> int:
        return len(self.lr) * len(self.num_virtual_tokens) * len(self.init) * len(self.placement)


def _values(flag: str, text: str, kind: Callable[[str], Any], allowed: Sequence[str] | None = None) -> tuple:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{flag} is empty: give comma-separated values")
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise ConfigError(f"--{flag}: {item!r} is not a valid {kind.__name__}") from None
        if allowed is not None and value not in allowed:
            raise ConfigError(f"--{flag}: {item!r} is not one of {', '.join(allowed)}")
        if flag == "lr" and not value > 0:
            raise ConfigError(f"--lr: {item} must be > 0")
        if flag == "num-virtual-tokens" and value < 1:
            raise ConfigError(f"--num-virtual-tokens: {item} must be >= 1")
        out.append(value)
    if len(set(out)) != len(out):
        raise ConfigError(f"--{flag} lists a value twice: {text}")
    return tuple(out)


def parse_space(lr: str, num_virtual_tokens: str, init: str, placement: str) -> SweepSpace:
    """The search space from the CLI's comma-separated lists, each value checked."""
    return SweepSpace(_values("lr", lr, float), _values("num-virtual-tokens", num_virtual_tokens, int),
                      _values("init", init, str, [i.value for i in PromptInit]),
                      _values("placement", placement, str, [p.value for p in Placement]))


def _hidden(url: str) -> str:
    """`url` with its password replaced by ***, for messages."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


class _JournalLock:
    """A journal study is one worker's: an exclusive lock on DIR/study.lock for the whole sweep."""

    shared = False

    def __init__(self, output: Path) -> None:
        import fcntl  # POSIX; the journal's own lock needs it too

        self._file = open(output / "study.lock", "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ConfigError(f"another sweep is running in {output}: wait for it, or share one study between "
                              f"workers with --storage postgresql://...") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def release(self) -> None:
        pass

    def close(self) -> None:
        self._file.close()


class _AdvisoryLock:
    """A PostgreSQL advisory lock (one per study name): held while a worker plans or claims a trial."""

    shared = True

    def __init__(self, url: str, study_name: str) -> None:
        from sqlalchemy import create_engine  # optional: shared sweeps only
        from sqlalchemy.pool import NullPool  # optional: shared sweeps only

        self._key = zlib.crc32(f"softprompt-sweep:{study_name}".encode())
        self._engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 10})
        self._conn = self._engine.connect()
        self._held = False

    def __enter__(self):
        from sqlalchemy import text  # optional: shared sweeps only

        self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._held = True
        return self

    def release(self) -> None:
        """Let other workers claim (idempotent: a trial's objective releases it once it holds its trial)."""
        from sqlalchemy import text  # optional: shared sweeps only

        if self._held:
            self._held = False
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})

    def __exit__(self, *exc) -> None:
        self.release()

    def close(self) -> None:
        self.release()
        self._conn.close()
        self._engine.dispose()


def open_storage(output: Path, storage: str | None, study_name: str, heartbeat: int):
    """(optuna storage, lock): the journal file in `output` (one worker), or a PostgreSQL database (many)."""
    from optuna.storages import JournalStorage  # optional: sweeps only
    from optuna.storages.journal import JournalFileBackend  # optional: sweeps only

    if storage is None:
        lock = _JournalLock(output)
        return JournalStorage(JournalFileBackend(str(output / "study.journal"))), lock
    scheme = storage.split("://", 1)[0] if "://" in storage else ""
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"--storage {_hidden(storage)!r}: give a postgresql:// URL "
                          f"(postgresql://user:password@host:5432/database), or leave it out for a journal file in "
                          f"--output")
    if heartbeat < 1:
        raise ConfigError(f"--heartbeat must be >= 1 second, got {heartbeat}")
    url = "postgresql+psycopg://" + storage.split("://", 1)[1]
    try:
        import psycopg  # noqa: F401  optional: shared sweeps only
        import sqlalchemy  # noqa: F401  optional: shared sweeps only
    except ImportError:
        raise ConfigError("--storage postgresql:// needs psycopg and sqlalchemy: pip install 'softprompt[sweep-db]'"
                          ) from None
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback  # optional: sweeps only
    from sqlalchemy.exc import SQLAlchemyError  # optional: shared sweeps only

    try:
        lock = _AdvisoryLock(url, study_name)
        with lock:  # two workers starting at once: one creates the tables, the other waits
            rdb = RDBStorage(url, engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}},
                             heartbeat_interval=heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"--storage {_hidden(storage)}: cannot open the database ({reason}); check the host, "
                          f"port, user, password and database name") from None
    return rdb, lock


def _study(storage, study_name: str, where: str, search: str, space: SweepSpace, seed: int, prune: bool,
           warmup_steps: int):
    import optuna  # optional: sweeps only

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if search in ("grid", "random"):  # a grid's trials are all queued with fixed settings (`_plan`)
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, max(2, space.size // 4)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=warmup_steps)
              if prune else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=study_name,
                                direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("space")
    if saved is not None and (saved != space.as_grid() or study.user_attrs.get("search") != search):
        raise ConfigError(f"{where} holds a sweep over {saved} ({study.user_attrs.get('search')}); "
                          f"use another {'--study' if where.startswith('study') else '--output'} for a different "
                          f"search")
    study.set_user_attr("space", space.as_grid())
    study.set_user_attr("search", search)
    return study


def _is_done(trial) -> bool:
    """Complete, pruned, or diverged (a failure with a reason) -- not one interrupted by a kill or Ctrl-C."""
    return trial.state.name in ("COMPLETE", "PRUNED") or (trial.state.name == "FAIL" and "error" in trial.user_attrs)


def _plan(study, space: SweepSpace, search: str, trials: int, seed: int, shared: bool) -> int:
    """Ready the study for this worker (under the study's lock); returns how many trials it can claim now.

    On a journal (one worker), trials a killed process left RUNNING ran nowhere and are marked failed; in a shared
    database they may be another worker's, and the heartbeat decides. A grid queues every combination not done,
    queued or running yet, in a seeded shuffled order, so an interrupted sweep runs exactly the missing ones.
    """

    from optuna.trial import TrialState  # optional: sweeps only

    if not shared:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    all_trials = study.get_trials(deepcopy=False)
    done = sum(_is_done(t) for t in all_trials)
    if search != "grid":
        return max(0, trials - done)
    key = ("lr", "num_virtual_tokens", "init", "placement")
    taken = {tuple(t.params.get(k) for k in key) for t in all_trials if _is_done(t)}
    pending = [t for t in all_trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    taken |= {tuple(t.system_attrs.get("fixed_params", {}).get(k) for k in key) for t in pending}
    grid = list(itertools.product(*(space.as_grid()[k] for k in key)))
    random.Random(seed).shuffle(grid)
    missing = [point for point in grid if point not in taken][: max(0, trials - done - len(pending))]
    for point in missing:
        study.enqueue_trial(dict(zip(key, point)))
    return len(missing) + sum(t.state is TrialState.WAITING for t in pending)


def _fail_stale(study, log: Callable[[str], None]) -> None:
    """Mark trials whose worker stopped sending heartbeats failed (each is queued again) and say so."""
    import warnings

    import optuna  # optional: sweeps only

    before = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if t.number in before:
            log(f"sweep: trial {t.number} (worker {before[t.number].user_attrs.get('worker', '?')}) stopped sending "
                f"heartbeats: marked failed and queued again")


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not _is_done(t):
            continue  # waiting, running, or interrupted (queued again)
        rows.append({"trial": t.number, **t.params, "state": t.state.name.lower(),
                     "score": t.value if t.value is not None else
                     (max(t.intermediate_values.values()) if t.intermediate_values else None),
                     "last_step": max(t.intermediate_values) if t.intermediate_values else 0,
                     "seconds": t.user_attrs.get("seconds"), "error": t.user_attrs.get("error"),
                     "worker": t.user_attrs.get("worker")})
    return rows


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "", "| rank | lr | tokens | init | placement | validation | state | steps | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    ranked = sorted(rows, key=lambda r: (r["state"] != "complete", -(r["score"] if r["score"] is not None
                                                                        else -math.inf)))
    for rank, r in enumerate(ranked, 1):
        score = f"{100 * r['score']:.1f}" if r["score"] is not None else "—"
        state = r["state"] + (f" ({r['error'][:60]})" if r.get("error") else "")
        lines.append(f"| {rank} | {r['lr']:g} | {r['num_virtual_tokens']} | {r['init']} | {r['placement']} | "
                     f"{score} | {state} | {r['last_step']} | {r['seconds'] or 0:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Best validation score vs prompt length, one line per init; one panel per learning rate."""
    import matplotlib  # start-up time: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up time: plots only


    scored = [r for r in rows if r["score"] is not None]
    lrs = sorted({r["lr"] for r in scored})
    if not lrs:
        return
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.6 * len(lrs), 4), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for init in sorted({r["init"] for r in scored}):
            points: dict[int, float] = {}
            for r in scored:
                if r["lr"] == lr and r["init"] == init:  # over placements: the best
                    points[r["num_virtual_tokens"]] = max(points.get(r["num_virtual_tokens"], -1), r["score"])
            if points:
                xs = sorted(points)
                ax.plot(xs, [100 * points[x] for x in xs], marker="o", label=init)
        pruned = [r for r in scored if r["lr"] == lr and r["state"] == "pruned"]
        if pruned:
            ax.scatter([r["num_virtual_tokens"] for r in pruned], [100 * r["score"] for r in pruned],
                       marker="x", color="grey", zorder=3, label="pruned (score when stopped)")
        ax.set_xscale("log")
        ax.set_xlabel("virtual tokens (log)")
        ax.set_title(f"lr {lr:g}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best validation accuracy %")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def best_yaml(base: TrainConfig, params: dict[str, Any], output: Path) -> str:
    """The best trial's settings as a `train --config` file: options that differ from the defaults."""
    best = base.replace(**params, output=str(output / "best"))
    defaults = TrainConfig(data=best.data).to_dict()
    chosen = {k: v for k, v in best.to_dict().items() if v != defaults.get(k) or k in params or k == "data"}
    return yaml.safe_dump(chosen, sort_keys=False)


def sweep(base: TrainConfig, space: SweepSpace, output: Path, *, search: str = "grid", trials: int | None = None,
          budget_steps: int = 60, evals: int = 3, prune: bool = True, log: Callable[[str], None] = print,
          backbone=None, task=None, storage: str | None = None, study_name: str = STUDY_NAME,
          heartbeat: int = HEARTBEAT_SECONDS) -> list[dict[str, Any]]:
    """Run (or continue, or join) the sweep into `output`; returns one row per finished trial.

    `storage`: None for `output/study.journal` (one worker), or a postgresql:// URL that any number of workers
    share under `study_name`; `heartbeat`: seconds between a worker's signs of life in the database.
    """
    import optuna  # optional: sweeps only


    if search not in SEARCHES:
        raise ConfigError(f"--search {search!r}: choose one of {', '.join(SEARCHES)}")
    if budget_steps < 1:
        raise ConfigError(f"--budget-steps must be >= 1, got {budget_steps}")
    if evals < 1:
        raise ConfigError(f"--evals must be >= 1, got {evals}")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if not study_name.strip():
        raise ConfigError("--study is empty: name the study")
    if search == "grid":
        trials = space.size if trials is None else min(trials, space.size)
    elif trials is None:
        raise ConfigError(f"--search {search} needs --trials N")
    for lr in space.lr:  # every combination must be a valid config before anything loads
        for n in space.num_virtual_tokens:
            for init in space.init:
                for placement in space.placement:
                    base.replace(lr=lr, num_virtual_tokens=n, init=init, placement=placement)
    output.mkdir(parents=True, exist_ok=True)
    eval_every = max(1, budget_steps // evals)
    backend, lock = open_storage(output, storage, study_name, heartbeat)
    try:
        where = f"study {study_name!r} in {_hidden(storage)}" if storage else str(output)
        with lock:
            study = _study(backend, study_name, where, search, space, base.seed, prune, warmup_steps=eval_every)
            to_run = _plan(study, space, search, trials, base.seed, lock.shared)
        done_before = sum(_is_done(t) for t in study.get_trials(deepcopy=False))
        if done_before:
            log(f"sweep: continuing {where}: {done_before} trial(s) done, {to_run} to run")
        if task is None:
            task = load_task(base.data, train_file=base.train_file, validation_file=base.validation_file,
                             test_file=base.test_file, task=base.task.value, text_fields=base.text_fields,
                             label_field=base.label_field, labels=base.labels)
        if backbone is None:
            backbone = load_backbone(base.model, dtype=resolve_precision(base.precision.value, "cpu"))
        worker = f"{socket.gethostname()}:{os.getpid()}"

        def finished() -> int:
            return sum(_is_done(t) for t in study.get_trials(deepcopy=False))

        def objective(trial) -> float:
            lock.release()  # the trial is claimed (RUNNING): other workers may claim the next one
            trial.set_user_attr("worker", worker)
            params = {"lr": trial.suggest_categorical("lr", list(space.lr)),
                      "num_virtual_tokens": trial.suggest_categorical("num_virtual_tokens",
                                                                      list(space.num_virtual_tokens)),
                      "init": trial.suggest_categorical("init", list(space.init)),
                      "placement": trial.suggest_categorical("placement", list(space.placement))}
            name = (f"{trial.number:03d}-lr{params['lr']:g}-n{params['num_virtual_tokens']}-{params['init']}-"
                    f"{params['placement']}")
            config = base.replace(**params, max_steps=budget_steps, eval_every=eval_every, patience=0,
                                  checkpoint_every=0, output=str(output / "trials" / name))
            started = time.perf_counter()

            def report(step: int, result: dict) -> None:
                trial.report(primary_metric(result), step)
                if step < budget_steps and trial.should_prune():
                    trial.set_user_attr("seconds", time.perf_counter() - started)
                    raise optuna.TrialPruned(f"validation {primary_metric(result):.3f} at step {step}")

            try:
                result = train(config, backbone=backbone, task=task, progress=False, on_validation=report)
            except TrainingDivergedError as exc:
                trial.set_user_attr("error", str(exc).split(";")[0])
                trial.set_user_attr("seconds", time.perf_counter() - started)
                raise
            trial.set_user_attr("seconds", time.perf_counter() - started)
            return primary_metric(result.best_validation)

        def announce(study_, trial) -> None:
            params = " ".join(f"{k}={v}" for k, v in trial.params.items())
            score = trial.value if trial.value is not None else (
                max(trial.intermediate_values.values()) if trial.intermediate_values else float("nan"))
            log(f"sweep: trial {trial.number} ({finished()}/{trials}) {params}: {trial.state.name.lower()} "
                f"{score:.3f} ({trial.user_attrs.get('seconds', 0):.0f} s)")
            write_outputs()

        title = (f"{base.model} on {base.data}: {search} sweep, {budget_steps} steps x batch {base.batch_size}, "
                 f"validation every {eval_every}")

        def write_outputs() -> list[dict[str, Any]]:
            rows = trial_rows(study)
            atomic_write(output / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(
                {"search": search, "space": space.as_grid(), "budget_steps": budget_steps, "rows": rows},
                indent=1)))
            atomic_write(output / "sweep.md", lambda tmp: Path(tmp).write_text(markdown(rows, title)))
            plot(rows, output / "sweep.png", title)
            complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            if complete:
                best = max(complete, key=lambda t: t.value)
                atomic_write(output / "best.yaml", lambda tmp: Path(tmp).write_text(
                    f"# best of {len(complete)} complete trials: validation {best.value:.4f} (trial {best.number})\n"
                    + best_yaml(base, best.params, output)))
            return rows

        _claim_trials(study, objective, announce, lock, search, trials, finished, heartbeat, log)
        return write_outputs()
    finally:
        lock.close()


def _claim_trials(study, objective, announce, lock, search: str, trials: int, finished: Callable[[], int],
                  heartbeat: int, log: Callable[[str], None]) -> None:
    """Claim and run trials until none is left to claim and no other worker's trial is still running.

    A claim happens under the study's lock: a queued trial (a grid point, or a dead worker's trial queued again)
    or, for random/TPE, a new draw while fewer than `trials` are done or running. The objective releases the lock
    once its trial is marked running.
    """
    from optuna.trial import TrialState  # optional: sweeps only

    said_waiting = False
    while True:
        with lock:
            if lock.shared:
                _fail_stale(study, log)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            running = states.count(TrialState.RUNNING)
            if TrialState.WAITING in states or (search != "grid" and finished() + running < trials):
                study.optimize(objective, n_trials=1, catch=(TrainingDivergedError,), callbacks=[announce])
                said_waiting = False
                continue
        if not running:
            return
        if not said_waiting:
            log(f"sweep: nothing left to claim; waiting for {running} trial(s) running on other workers")
            said_waiting = True
        time.sleep(min(5, heartbeat))
