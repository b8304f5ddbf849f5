"""Runs that cannot be mixed or lost: resume checks, metrics without repeated steps, the run lock,
stopping on a signal, a full disk. In-process on a tiny model (a few hundred ms a run); the real-
signal and two-process checks are in test_reliability.py."""

import errno
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import npo
from helpers import save_tiny_model, write_tofu_layout
from npo import checkpoint as ckpt
from npo import runguard
from npo import train as train_module
from npo.cli import main
from npo.config import TrainConfig, build
from npo.errors import NpoError, Stopped
from npo.methods import METHODS
from npo.train import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return save_tiny_model(root / "model"), write_tofu_layout(root / "data", n_forget=8, n_retain=12)


BASE = dict(forget="forget10", retain="retain90", method="npo_rt", epochs=3, batch_size=2, lr=1e-3, template="qa",
            warmup_epochs=0, save_every_steps=1)  # 4 steps an epoch, 12 in all


def _cfg(tiny, out, **kw):
    model, data = tiny
    return build(None, {"model": str(model), "data": str(data), "out": str(out), **BASE, **kw})


def _args(tiny, out, *extra):
    model, data = tiny
    return ["unlearn", "--model", str(model), "--data", str(data), "--out", str(out),
            *(f"{k}={v}" for k, v in BASE.items()), *extra]


def _cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _steps(run):
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    return npo.unlearn(_cfg(tiny, tmp_path_factory.mktemp("ref") / "run"))


def _stop_at(trainer, step, action):
    """Run `action()` at the start of step `step` + 1 (before its computation)."""
    real = trainer.train_step

    def wrapped():
        if trainer.step == step:
            action()
        return real()
    trainer.train_step = wrapped


class _Crash(Exception):
    pass


def _crash(trainer, step):
    def boom():
        raise _Crash
    _stop_at(trainer, step, boom)
    with pytest.raises(_Crash):
        trainer.run()


# ----------------------------------------------------------------------------- resume checks


@pytest.fixture()
def stopped(tiny, tmp_path):
    """A run crashed after the checkpoint of step 5, with a torn metrics line as a SIGKILL leaves it."""
    run = tmp_path / "run"
    _crash(Trainer(_cfg(tiny, run), METHODS["npo_rt"]), 5)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')
    return run


@pytest.mark.parametrize("extra, named", [
    (["--lr", "1e-4"], "lr: 0.001 in the run, 0.0001 now"),
    (["beta=0.5"], "beta: 0.1 in the run, 0.5 now"),
    (["epochs=6"], "epochs: 3 in the run, 6 now"),
    (["--method", "ga"], "method: npo_rt in the run, ga now"),
    (["--forget", "retain90"], "forget: forget10 in the run, retain90 now"),
])
def test_resume_refuses_a_changed_setting_naming_both_values(stopped, capsys, extra, named):
    before = (stopped / "metrics.jsonl").read_text()
    code, err = _cli(["unlearn", "--resume", str(stopped), *extra], capsys)
    assert code == 2 and named in err and "cannot resume" in err, err
    assert (stopped / "metrics.jsonl").read_text() == before  # nothing touched
    assert not (stopped / "resumes.jsonl").exists()


def test_resume_applies_a_safe_change_records_it_and_ends_equal(stopped, reference, capsys):
    code, _ = _cli(["unlearn", "--resume", str(stopped), "save_every_steps=3", "eval_batch_size=4"], capsys)
    assert code == 0
    entries = [json.loads(x) for x in (stopped / "resumes.jsonl").read_text().splitlines()]
    assert entries == [{"time": entries[0]["time"], "from_step": 5,
                        "changed": {"save_every_steps": {"old": 1, "new": 3}, "eval_batch_size": {"old": TrainConfig().eval_batch_size, "new": 4}}}]
    stored = npo.resume_config(stopped)
    assert (stored.save_every_steps, stored.eval_batch_size) == (3, 4)  # what the run continues with
    assert _steps(stopped) == list(range(1, 13))  # steps 6.. dropped with the torn line, trained once each
    assert _same(_weights(reference), _weights(stopped))


def test_resume_of_a_finished_run_trains_nothing(reference, capsys, caplog):
    before = (reference / "metrics.jsonl").read_text()
    weights_mtime = (reference / "model" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="npo"):
        code, _ = _cli(["unlearn", "--resume", str(reference)], capsys)
    assert code == 0 and f"{reference} is finished (12 steps); nothing to resume" in caplog.text
    assert (reference / "metrics.jsonl").read_text() == before
    assert (reference / "model" / "model.safetensors").stat().st_mtime_ns == weights_mtime
    code, err = _cli(["unlearn", "--resume", str(reference), "epochs=4"], capsys)  # extending is refused
    assert code == 2 and "epochs: 3 in the run, 4 now" in err


def test_resume_and_overwrite_together_are_refused(stopped, capsys):
    code, err = _cli(["unlearn", "--resume", str(stopped), "--overwrite"], capsys)
    assert code == 2 and "give one of them" in err


def test_api_resume_with_another_config_is_refused(tiny, stopped):
    with pytest.raises(NpoError, match=r"changed settings \(lr: 0.001 in the run, 0.002 now\)"):
        npo.unlearn(_cfg(tiny, stopped, lr=2e-3), resume=True)


def test_resume_before_any_checkpoint_starts_over_without_duplicates(tiny, reference, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny, run, save_every_steps=100), METHODS["npo_rt"])  # no save before the end
    _crash(trainer, 7)
    assert len(_steps(run)) == 7 and not (run / "checkpoint").exists()
    npo.unlearn(_cfg(tiny, run, save_every_steps=100), resume=True)
    assert _steps(run) == list(range(1, 13))
    assert _same(_weights(reference), _weights(run))


# ----------------------------------------------------------------------------- the lock


def test_second_run_on_a_locked_directory_is_refused_and_touches_nothing(tiny, reference, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lock = ckpt.RunLock(run)  # a run in progress (this process holds the lock)
    try:
        code, err = _cli(_args(tiny, run), capsys)
        assert code == 2 and "in use by a trainer of this process" in err, err
    finally:
        lock.release()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written, nothing removed
    assert _cli(_args(tiny, run), capsys)[0] == 0  # released: the run goes ahead


def test_lock_names_the_holding_process_and_dies_with_it(tiny, tmp_path, capsys):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[2:]; "
                               "from npo.checkpoint import RunLock; from pathlib import Path; "
                               "lock = RunLock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()",
                               str(run), *sys.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _cli(_args(tiny, run), capsys)
        assert code == 2 and f"in use by another npo process (pid {holder.pid})" in err, err
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock
        holder.wait()
    assert _cli(_args(tiny, run), capsys)[0] == 0


# ----------------------------------------------------------------------------- signals (in process)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_at_the_step_boundary_with_a_checkpoint(tiny, reference, tmp_path, sig, code):
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny, run, save_every_steps=4), METHODS["npo_rt"])
    _stop_at(trainer, 5, lambda: os.kill(os.getpid(), sig))  # arrives during step 6
    with pytest.raises(Stopped) as stop:
        trainer.run()
    name = signal.Signals(sig).name
    assert stop.value.code == code
    assert str(stop.value) == (f"stopped at step 6 of 12 by {name}; checkpoint saved; "
                               f"resume with: npo unlearn --resume {run}")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert signal.getsignal(sig) != trainer.signals._handle  # handlers restored
    npo.unlearn(_cfg(tiny, run, save_every_steps=4), resume=True)
    assert _steps(run) == list(range(1, 13))
    assert _same(_weights(reference), _weights(run))


def test_second_signal_stops_mid_step(tiny, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny, run, save_every_steps=4), METHODS["npo_rt"])
    _stop_at(trainer, 5, lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)])
    with pytest.raises(Stopped, match=r"^stopped during step 6 of 12 by a second SIGINT; the checkpoint of step 4 "
                                      r"is kept; resume with: npo unlearn --resume ") as stop:
        trainer.run()
    assert stop.value.code == 130
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4


def test_second_signal_during_the_save_keeps_the_previous_checkpoint(tiny, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny, run, save_every_steps=4), METHODS["npo_rt"])
    _stop_at(trainer, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    real = ckpt.save_file

    def save_file(tensors, path):  # the stop's save (step 6) is interrupted half-written
        real(tensors, path)
        if trainer.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(ckpt, "save_file", save_file)
    with pytest.raises(Stopped, match=r"stopped while saving the checkpoint of step 6 of 12 by a second SIGTERM; "
                                      r"the checkpoint of step 4 is kept; resume with: npo unlearn --resume") as stop:
        trainer.run()
    assert stop.value.code == 143
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not list(run.glob(".checkpoint-*"))
    monkeypatch.setattr(ckpt, "save_file", real)
    npo.unlearn(_cfg(tiny, run, save_every_steps=4), resume=True)
    assert _steps(run) == list(range(1, 13))
    assert _same(_weights(reference), _weights(run))


# ----------------------------------------------------------------------------- a full disk


def _disk_full_on(monkeypatch, module, name, when):
    """`module.name` writes part of its file, then fails as a full disk does, while `when()`."""
    real = getattr(module, name)

    def writer(obj, path, *args, **kwargs):
        if when():
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *args, **kwargs)
    monkeypatch.setattr(module, name, writer)


def test_full_disk_during_a_checkpoint(tiny, reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    full = {"on": True}
    saves = []
    real = ckpt.save_file
    monkeypatch.setattr(ckpt, "save_file", lambda t, p: saves.append(p) or real(t, p))
    _disk_full_on(monkeypatch, ckpt, "save_file", lambda: full["on"] and len(saves) >= 3)
    code, err = _cli(_args(tiny, run, "save_every_steps=2"), capsys)
    assert code == 2
    assert err == (f"npo unlearn: error: cannot write the checkpoint of step 4 in {run}: no space left on device; "
                   f"its temporary files are removed and the checkpoint of step 2 is intact; free space and resume "
                   f"with: npo unlearn --resume {run}")
    assert not list(run.glob(".checkpoint-*"))
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    code, err = _cli(["unlearn", "--resume", str(run)], capsys)  # the disk is still full: one line again
    assert code == 2 and "no space left on device" in err and "checkpoint of step 2 is intact" in err
    full["on"] = False  # space freed
    assert _cli(["unlearn", "--resume", str(run)], capsys)[0] == 0
    assert _steps(run) == list(range(1, 13))
    assert _same(_weights(reference), _weights(run))


def test_full_disk_while_saving_the_model_leaves_no_partial_model(tiny, reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = runguard.save_model

    def save_model(model, tok, out, merge=True):
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runguard, "save_model", save_model)
    code, err = _cli(_args(tiny, run, "save_every_steps=5"), capsys)
    assert code == 2 and "cannot write the final model" in err and "checkpoint of step 10 is intact" in err, err
    assert not (run / "model").exists() and not (run / "done.json").exists() and not list(run.glob(".model-tmp*"))
    monkeypatch.setattr(runguard, "save_model", real)
    assert _cli(["unlearn", "--resume", str(run)], capsys)[0] == 0
    assert _same(_weights(reference), _weights(run))


def test_full_disk_on_metrics_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_open = train_module.Path.open

    def opener(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)
    monkeypatch.setattr(train_module.Path, "open", opener)
    code, err = _cli(_args(tiny, run), capsys)
    assert code == 2 and err.startswith(f"npo unlearn: error: cannot write metrics.jsonl in {run}: no space left")


def test_failed_start_leaves_no_empty_output_directory(tiny, tmp_path, capsys):
    model, data = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    run = tmp_path / "run"
    code, err = _cli(_args((broken, data), run), capsys)
    assert code == 2 and "truncated or corrupted" in err, err
    assert not run.exists()


def test_crashes_between_the_checkpoint_renames_never_lose_the_last_checkpoint(tiny, reference, tmp_path,
                                                                               monkeypatch):
    run = tmp_path / "run"
    real = ckpt.os.rename

    def crash_before_the_new_one_is_in_place(src, dst):
        if str(dst).endswith("/checkpoint"):
            raise _Crash
        real(src, dst)
    trainer = Trainer(_cfg(tiny, run, save_every_steps=2), METHODS["npo_rt"])
    trainer.save_checkpoint = _second_call_crashes(trainer.save_checkpoint, monkeypatch,
                                                   crash_before_the_new_one_is_in_place)
    with pytest.raises(_Crash):  # the first save goes through; the second crashes between its renames
        trainer.run()
    assert not (run / "checkpoint").exists() and (run / ckpt.OLD / "state.json").exists()
    # the resume starts from .checkpoint-old (step 2); its first save crashes again before the rename
    resumed = Trainer(_cfg(tiny, run, save_every_steps=2), METHODS["npo_rt"], resume=True)
    assert resumed.step == 2 and not list(run.glob(".checkpoint-tmp-*"))  # the orphan was swept
    monkeypatch.setattr(ckpt.os, "rename", crash_before_the_new_one_is_in_place)
    with pytest.raises(_Crash):
        resumed.run()
    assert json.loads((run / ckpt.OLD / "state.json").read_text())["step"] == 2  # still there
    monkeypatch.setattr(ckpt.os, "rename", real)
    npo.unlearn(_cfg(tiny, run, save_every_steps=2), resume=True)
    assert _steps(run) == list(range(1, 13)) and not (run / ckpt.OLD).exists()
    assert _same(_weights(reference), _weights(run))


def _second_call_crashes(save, monkeypatch, crashing_rename):
    calls = []

    def wrapped():
        calls.append(1)
        if len(calls) == 2:
            monkeypatch.setattr(ckpt.os, "rename", crashing_rename)
        save()
    return wrapped
