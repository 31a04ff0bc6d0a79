"""Optuna search: space parsing, pruning that leaves clean folders, resume of an interrupted trial, the best
config exported and retrained on train+validation, and two workers sharing one study in a real PostgreSQL."""

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from emotune import api, runs
from emotune.config import RunConfig
from emotune.errors import ConfigError, Interrupted, RunError
from emotune.experiments.grid import Grid, cell_status
from emotune.experiments.tune import (
    SearchSpace,
    _safe_url,
    default_storage,
    open_study,
    tune,
)
from emotune.runs import run_lock

tune_module = sys.modules["emotune.experiments.tune"]  # the module (the package exports the function)


def space_spec(tiny_model, data_dir, **extra):
    spec = {"study": "tiny",
            "base": {"data": {"data_dir": str(data_dir)}, "model": {"name": tiny_model}, "method": {"name": "lora"},
                     "train": {"batch_size": 8, "eval_every": 3, "max_steps": 9, "precision": "fp32",
                               "patience": None, "threads": 1}},
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": "none",
            "space": {"train.lr": {"type": "float", "low": "1e-3", "high": 1e-2, "log": True},
                      "method.r": [2, 4]}}
    spec.update(extra)
    return spec


def test_space_parsing():
    s = SearchSpace.from_dict({"space": {"train.lr": {"type": "float", "low": 1e-4, "high": "3e-3", "log": True},
                                         "method.target": ["attention", ["query", "value"]],
                                         "train.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8}},
                               "objective": {"metric": "loss"}})
    assert (s.metric, s.direction, s.base.train.metric) == ("loss", "minimize", "loss")
    assert [p.type for p in s.params] == ["float", "categorical", "int"] and s.params[0].high == 3e-3
    assert s.sampler == {"name": "tpe"} and s.pruner == {"name": "median"}
    trial = optuna.create_study().ask()
    cfg = s.config_for({p.key: p.suggest(trial) for p in s.params})
    assert cfg.method["target"] in ("attention", ["query", "value"]) and cfg.train.batch_size in (8, 16, 24, 32)
    for bad, message in [({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log"),
                         ({"space": {"train.lr": {"type": "uniform"}}}, "type must"),
                         ({"space": {"train.lr": [1e-3]}, "objective": {"metric": "bleu"}}, "not a validation"),
                         ({"space": {"train.nope": [1]}}, "unknown train option"),
                         ({"space": {"method.r": [2]}, "pruner": "patient"}, "unknown pruner"),
                         ({"space": {}}, "space")]:
        with pytest.raises(ConfigError, match=message):
            SearchSpace.from_dict(bad)


@pytest.mark.parametrize("name", ["search-lora.yaml", "search-mr.yaml"])
def test_shipped_search_files(name):
    """The search files under experiments/ parse and every corner of their space is a valid config."""
    s = SearchSpace.from_yaml(Path(__file__).parents[1] / "experiments" / name)
    assert s.params and s.base.train.metric == s.metric == "accuracy"
    for corner in ("low", "high"):
        s.config_for({p.key: p.choices[-1 if corner == "high" else 0] if p.type == "categorical"
                      else getattr(p, corner) for p in s.params})


def test_pruned_trials_leave_clean_folders(tiny_model, toy_data, tmp_path):
    # The threshold pruner stops every trial at its first evaluation (accuracy is never above 1.01).
    s = SearchSpace.from_dict(space_spec(tiny_model, toy_data, pruner={"name": "threshold", "lower": 1.01}))
    r = tune(s, tmp_path, trials=2, progress=False)
    assert (r.complete, r.pruned, r.failed, r.best) == (0, 2, 0, None)
    for trial in ("trial-0000", "trial-0001"):
        folder = tmp_path / "trials" / trial
        names = {p.name for p in folder.iterdir()}
        assert "checkpoint.safetensors" not in names and "model.safetensors" not in names
        metrics = yaml.safe_load((folder / "metrics.json").read_text())
        assert metrics["pruned"] and metrics["pruned_at_step"] == 3 and not metrics["completed"]
        # Nothing would resume it: a grid pointed at this folder sees an unfinished run without a checkpoint.
        cell = Grid.from_dict({"base": RunConfig.from_yaml(folder / "config.yaml").to_dict()}).cells[0]
        assert cell_status(cell, folder) == "incomplete"


def test_median_pruning_study(tiny_model, toy_data, tmp_path):
    s = SearchSpace.from_dict(space_spec(tiny_model, toy_data, pruner={"name": "median", "n_startup_trials": 1}))
    r = tune(s, tmp_path, trials=4, progress=False)
    assert r.complete + r.pruned == 4 and r.failed == 0 and r.complete >= 1
    study = open_study(s, r.storage)
    for t in study.trials:
        assert t.intermediate_values and set(t.intermediate_values) <= {3, 6, 9}
        assert (tmp_path / t.user_attrs["run"] / "config.yaml").exists()


def test_resume_export_and_retrain_full(tiny_model, toy_data, tmp_path, monkeypatch, caplog):
    s = SearchSpace.from_dict(space_spec(tiny_model, toy_data))
    real_train = api.train

    def interrupted_once(cfg, out, **kw):  # as if Ctrl-C came at step 4 of the first trial
        monkeypatch.setattr(api, "train", real_train)
        return real_train(cfg, out, **{**kw, "on_step": lambda step: step == 4})

    monkeypatch.setattr(api, "train", interrupted_once)
    optuna.logging.enable_propagation()  # Optuna's records reach caplog
    try:
        with pytest.raises(Interrupted):
            tune(s, tmp_path, trials=2, progress=False)
    finally:
        optuna.logging.disable_propagation()
    assert (tmp_path / "trials" / "trial-0000" / "checkpoint.safetensors").exists()
    assert not [r for r in caplog.records if "failed" in r.getMessage()]  # a pause, not a failure with a traceback

    r = tune(s, tmp_path, trials=2, progress=False)  # the study resumes: the interrupted trial first
    study = open_study(s, r.storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    resumed = study.trials[1]
    assert resumed.user_attrs["run"] == "trials/trial-0000" and resumed.user_attrs["resumes"] == 0
    assert resumed.params == study.trials[0].params
    metrics = yaml.safe_load((tmp_path / "trials" / "trial-0000" / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == 4 and metrics["train"]["steps"] == 9

    r = tune(s, tmp_path, trials=3, progress=False, retrain=True)  # one more trial, not three
    assert r.complete == 3 and len(open_study(s, r.storage).trials) == 4
    best = RunConfig.from_yaml(r.best_config)
    assert best.to_dict() == open_study(s, r.storage).best_trial.user_attrs["config"]
    assert best.train.lr == r.best["params"]["train.lr"] and best.method["r"] == r.best["params"]["method.r"]
    run = Path(r.retrained["run"])
    m = yaml.safe_load((run / "metrics.json").read_text())
    assert m["retrained"]["from_trial"] == r.best["trial"] and m["train"]["steps"] == r.best["best_step"]
    assert m["data"]["train"] == 120 + 36 and "test" in m  # train+validation, then tested
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: pytest.fail("tested twice"))
    again = tune(s, tmp_path, trials=3, progress=False, retrain=True)
    assert again.retrained["test"] == m["test"]


# ---- two workers, one PostgreSQL study ----------------------------------------------------------------

def _pg_binaries() -> tuple[str, str] | None:
    for initdb in sorted(glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True) + [shutil.which("initdb") or ""]:
        pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        if initdb and os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _unavailable(why: str):
    if os.environ.get("CI"):
        raise RuntimeError(f"{why}: run scripts/install-system-deps.sh and pip install -e '.[test]'")
    pytest.skip(why)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port (as user postgres when run as root)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg (the PostgreSQL driver) is not installed")
    binaries = _pg_binaries()
    if binaries is None:
        _unavailable("PostgreSQL server binaries (Debian package postgresql) not found")
    initdb, pg_ctl = binaries
    base = Path(tempfile.mkdtemp(prefix="emotune-pg-"))
    as_postgres = os.geteuid() == 0  # initdb refuses to run as root
    if as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        cmd = [str(c) for c in cmd]
        if as_postgres:
            cmd = (["runuser", "-u", "postgres", "--", *cmd] if shutil.which("runuser")
                   else ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)])
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    run(initdb, "-D", base / "data", "-U", "emotune", "--auth=trust", "-E", "UTF8")
    run(pg_ctl, "-D", base / "data", "-l", base / "server.log", "-w", "-o", f"-h 127.0.0.1 -p {port} -k {base}",
        "start")
    try:
        yield f"postgresql://emotune@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", base / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _complete_trials(url: str) -> int:
    try:
        study = optuna.load_study(study_name="tiny", storage=url)
    except KeyError:  # the first worker has not created the study yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def test_two_workers_share_one_postgres_study(tiny_model, toy_data, tmp_path, postgres_url):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(space_spec(tiny_model, toy_data, storage=postgres_url)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}

    def worker(i):
        return subprocess.Popen([sys.executable, "-m", "emotune.cli", "tune", str(f), "--trials", "6", "--out",
                                 str(tmp_path / f"worker{i}"), "--no-progress"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    workers = [worker(0)]
    deadline = time.time() + 300  # a failure bound only: the loop waits for a condition
    while not _complete_trials(postgres_url):
        assert workers[0].poll() is None and time.time() < deadline, workers[0].communicate()
        time.sleep(0.2)
    workers.append(worker(1))
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (stdout, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr
        assert "study 'tiny'" in stdout and "best: trial" in stdout
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 6 <= len(done) <= 7  # a race can start one extra trial; never fewer than asked
    # How the trials split between the workers depends on timing; that they share one study does not:
    # the second worker is started only once the first has finished a trial, and it must count that trial.
    for t in done:  # each trial's run sits with the worker that trained it
        here = [tmp_path / f"worker{i}" / t.user_attrs["run"] for i in range(2)]
        assert sum((p / "metrics.json").exists() for p in here) == 1
    assert all((tmp_path / f"worker{i}" / "best.yaml").exists() for i in range(2))


def test_a_second_study_never_takes_a_finished_trial_of_another(tiny_model, toy_data, tmp_path):
    first = SearchSpace.from_dict(space_spec(tiny_model, toy_data))
    tune(first, tmp_path, trials=1, progress=False)
    other = space_spec(tiny_model, toy_data, study="other")  # numbered from 0 too, other parameters
    other["base"]["train"]["max_steps"] = 6
    with pytest.raises(RunError, match="another configuration"):
        tune(SearchSpace.from_dict(other), tmp_path, trials=1, progress=False)


def test_an_interrupted_trial_is_queued_again_once(tiny_model, toy_data, tmp_path, monkeypatch):
    s = SearchSpace.from_dict(space_spec(tiny_model, toy_data))
    study = open_study(s, default_storage(tmp_path))
    trial = study.ask()
    trial.set_user_attr("run", "trials/trial-0000")
    study.tell(trial, state=TrialState.FAIL)
    (tmp_path / "trials" / "trial-0000").mkdir(parents=True)
    (tmp_path / "trials" / "trial-0000" / "checkpoint.safetensors").write_bytes(b"")
    # Workers sharing an --out queue interrupted trials under the folder's lock, one after the other, so
    # the second sees the trial the first queued.
    held = []
    real = tune_module.requeue_interrupted
    monkeypatch.setattr(tune_module, "requeue_interrupted",
                        lambda st, out: held.append(out.resolve() in runs._held) or real(st, out))
    tune(s, tmp_path, trials=0, progress=False)
    tune(s, tmp_path, trials=0, progress=False)
    assert held == [True, True]
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.user_attrs["resumes"] for t in waiting] == [0]
    # The lock serialises processes: a second one waits for the first instead of running alongside.
    script = ("import sys; from emotune.runs import run_lock\n"
              "with run_lock(sys.argv[1], 'second', wait=True): print(open(sys.argv[1] + '/.lock').read())")
    with run_lock(tmp_path, "first worker"):
        second = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0 and "(second)" in stdout, stderr


def test_storage_urls_never_show_their_password():
    assert "secret" not in _safe_url("postgresql://emotune:secret@db.example:5432/emotune")
    assert "secret" not in _safe_url("postgresql://emotune:secret@[broken")
