"""Reliability: resume after SIGKILL, the non-finite guard, clear refusals of bad input, safe loading."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import npo
from helpers import qa_rows, save_tiny_model, write_jsonl, write_tofu_layout
from npo import losses
from npo.cli import main
from npo.config import build
from npo.errors import NpoError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    return save_tiny_model(root / "model"), write_tofu_layout(root / "data", n_forget=8, n_retain=12)


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _unlearn_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "npo", "unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10",
            "--retain", "retain90", "--method", "npo_rt", "--out", str(out), "--epochs", "12", "--lr", "1e-3",
            "--batch-size", "2", "template=qa", "save_every_steps=2", "warmup_epochs=0", *extra]


def _checkpoint_step(state):
    """The saved step, or -1 while no checkpoint is in place (a save renames directories under us)."""
    try:
        return json.loads(state.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def test_resume_after_sigkill_matches_uninterrupted_run(tiny, tmp_path):
    model, data = tiny
    full = subprocess.run(_unlearn_cmd(model, data, tmp_path / "full"), env=_env(), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(_unlearn_cmd(model, data, tmp_path / "killed"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _checkpoint_step(state) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "done.json").exists()
    # the lock of the killed process went with it, so the resume below is not refused
    resumed = subprocess.run([sys.executable, "-m", "npo", "unlearn", "--resume", str(tmp_path / "killed")],
                             env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 48


def test_sigterm_stops_with_a_checkpoint_and_a_second_run_is_refused_meanwhile(tiny, tmp_path, capsys):
    """A real process, a real SIGTERM (what a scheduler sends before SIGKILL): it stops at a step
    boundary, saves, prints the resume command, exits 143; while it ran, a second run on its --out
    (even with --overwrite) was refused naming its pid and removed nothing."""
    model, data = tiny
    run = tmp_path / "run"
    cmd = _unlearn_cmd(model, data, run, "--epochs", "2000")  # far longer than the test waits
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    try:
        code, err = _run_cli(cmd[3:] + ["--overwrite"], capsys)
        assert code == 2 and f"in use by another npo process (pid {proc.pid})" in err, err
        assert (run / "config.yaml").exists() and metrics.exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    step = json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    assert last == (f"npo unlearn: stopped at step {step} of 8000 by SIGTERM; checkpoint saved; "
                    f"resume with: npo unlearn --resume {run}")
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(range(1, step + 1))


def _cfg(tiny, out, **kw):
    model, data = tiny
    base = dict(model=str(model), data=str(data), forget="forget10", retain="retain90", method="npo_rt", epochs=2,
                batch_size=4, lr=1e-3, template="qa", out=str(out), warmup_epochs=0)
    return build(None, {**base, **kw})


def _nan_on_call(n, monkeypatch):
    real, calls = losses.npo_loss, {"n": 0}

    def fake(*args, **kw):
        calls["n"] += 1
        value = real(*args, **kw)
        return value * float("nan") if calls["n"] == n else value
    monkeypatch.setattr(losses, "npo_loss", fake)


def test_nonfinite_loss_stops_before_the_optimizer(tiny, tmp_path, monkeypatch):
    _nan_on_call(3, monkeypatch)  # step 2 has micro-batches 3-4 (batch 4 of 8 examples, 1 process)
    from npo.methods import METHODS
    from npo.train import Trainer

    trainer = Trainer(_cfg(tiny, tmp_path / "run", save_every_steps=1), METHODS["npo_rt"])
    with pytest.raises(NpoError, match=r"non-finite .* at step 3: .*forget_loss=nan"):
        trainer.run()
    ckpt = load_file(str(tmp_path / "run" / "checkpoint" / "trainable.safetensors"))
    live = {n: p.detach() for n, p in trainer.model.named_parameters()}
    assert all(torch.equal(ckpt[n], live[n]) for n in ckpt)  # weights untouched by the bad step
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 2


def test_nonfinite_skip_policy_is_bounded(tiny, tmp_path, monkeypatch):
    _nan_on_call(2, monkeypatch)
    run = npo.unlearn(_cfg(tiny, tmp_path / "skip", nonfinite="skip", max_skipped_steps=1))
    assert json.loads((run / "done.json").read_text())["skipped"] == 1


def _run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


BAD_DATA = {
    "malformed.json": ('[{"question": "Q?", "answer": "A."},', "malformed JSON"),
    "broken.jsonl": ('{"question": "Q?", "answer": "A."}\n{"question": ', "line 2"),
    "no_question.json": ('[{"answer": "A."}]', "row 1, field 'question': missing"),
    "no_answer.json": ('[{"question": "Q?"}]', "field 'answer': missing"),
    "empty_value.json": ('[{"question": " ", "answer": "A."}]', "field 'question': empty"),
    "number.json": ('[{"question": "Q?", "answer": 7}]', "field 'answer': expected a string"),
    "perturbed.json": ('[{"question": "Q?", "answer": "A.", "perturbed_answer": "x"}]', "field 'perturbed_answer'"),
    "empty.json": ("[]", "empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_gives_one_clear_line(tiny, tmp_path, capsys, name):
    model, _ = tiny
    text, words = BAD_DATA[name]
    path = tmp_path / name
    path.write_text(text)
    retain = write_jsonl(tmp_path / "retain.jsonl", qa_rows(2))
    code, err = _run_cli(["unlearn", "--model", str(model), "--forget", str(path), "--retain", str(retain),
                          "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and words in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--forget", "forget99"], "no split 'forget99'"),
    (["--method", "unlearn_everything"], "argument --method: invalid choice: 'unlearn_everything'"),
    (["learning_rate=1"], "unknown config key 'learning_rate'"),
    (["epochs=three"], "'epochs' must be an integer"),
    (["max_length=8"], "not shorter than max_length 8"),
    (["--model", "/nonexistent/model"], "model path does not exist: /nonexistent/model"),
    (["--out", "/proc/npo-cannot-write"], "cannot write to output directory"),
])
def test_bad_config_gives_one_clear_line(tiny, tmp_path, capsys, args, words):
    model, data = tiny
    base = ["unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10", "--retain", "retain90",
            "--out", str(tmp_path / "out")]
    code, err = _run_cli(base + args, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_existing_run_is_refused_without_overwrite(tiny, tmp_path, capsys):
    npo.unlearn(_cfg(tiny, tmp_path / "run", epochs=1))
    model, data = tiny
    base = ["unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10", "--retain", "retain90",
            "--out", str(tmp_path / "run"), "--epochs", "1", "template=qa"]
    code, err = _run_cli(base, capsys)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert _run_cli(base + ["--overwrite"], capsys)[0] == 0


def test_debug_shows_traceback(tmp_path, capsys):
    with pytest.raises(NpoError):
        main(["--debug", "unlearn", "--model", str(tmp_path / "none"), "--forget", "x", "--out", str(tmp_path / "o")])


def test_config_cannot_execute_code(tmp_path, capsys):
    evil = tmp_path / "evil.yaml"
    evil.write_text("method: !!python/object/apply:os.system ['echo pwned']\n")
    code, err = _run_cli(["unlearn", "--config", str(evil), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not valid YAML" in err


def test_pickle_weights_are_refused_unless_allowed(tmp_path, capsys):
    from helpers import make_model

    model_dir = tmp_path / "pickled"
    make_model(400).save_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    torch.save({}, model_dir / "pytorch_model.bin")
    from npo.modeling import load_model

    with pytest.raises(NpoError, match="pickle"):
        load_model(str(model_dir), torch.float32)


def test_trust_remote_code_is_off_by_default():
    assert build(None, {}).trust_remote_code is False
