"""Two processes (gloo, CPU) against one: same loss trajectory and final weights for per-device batch B
against batch 2B, and the same evaluation logs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import save_tiny_model, write_tofu_layout
from npo.eval.logs import SET_NAMES, load_log_dir

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, procs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "npo", *args]
    else:
        cmd = [str(TORCHRUN), f"--nproc_per_node={procs}", f"--master_port={_port()}", "-m", "npo", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found beside the interpreter")
    root = tmp_path_factory.mktemp("dist")
    return save_tiny_model(root / "model"), write_tofu_layout(root / "data", n_forget=8, n_retain=12)


def test_two_processes_batch_b_equal_one_process_batch_2b(tiny, tmp_path):
    # npo_rt exercises both window shares: per-example (NPO) and per-token (retain NLL)
    model, data = tiny
    common = ["unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10", "--retain", "retain90",
              "--method", "npo_rt", "--epochs", "2", "--lr", "1e-3", "template=qa", "warmup_epochs=0"]
    _run([*common, "--batch-size", "4", "--out", str(tmp_path / "one")], 1)
    _run([*common, "--batch-size", "2", "--out", str(tmp_path / "two")], 2)
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    wa = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["world_size"] == 2


def test_two_process_evaluation_gives_the_same_logs(tiny, tmp_path):
    model, data = tiny
    common = ["eval", "--model", str(model), "--forget-split", "forget10", "--data", str(data), "--template", "qa",
              "--max-new-tokens", "6", "--batch-size", "3"]
    _run([*common, "--out", str(tmp_path / "one")], 1)
    _run([*common, "--out", str(tmp_path / "two")], 2)
    one, two = load_log_dir(tmp_path / "one"), load_log_dir(tmp_path / "two")
    for name in SET_NAMES:
        assert one[name]["generated_text"] == two[name]["generated_text"]
        assert one[name]["avg_gt_loss"] == pytest.approx(two[name]["avg_gt_loss"], abs=1e-5)
        assert one[name]["num_token_perturb"] == two[name]["num_token_perturb"]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["model_utility"] == pytest.approx(s2["model_utility"], rel=1e-5)
