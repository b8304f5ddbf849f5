"""Shared fixtures; every test runs offline on one thread."""

import os

import pytest
import torch

from helpers import CHAT_TEMPLATE, make_model, make_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_tokenizer(CHAT_TEMPLATE)


@pytest.fixture()
def model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """`npo demo --quick` run once per test session and shared by the pytest-xdist workers (the first
    to take the lock builds it): its testbed, target, retain and unlearned models feed several tests."""
    import fcntl

    from npo.demo.run import QUICK, run_demo

    # under pytest-xdist the workers' base dirs share a per-session parent; alone, use our own
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "quick_demo"
    with open(shared / "quick_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "report.md").exists():
            torch.set_num_threads(2)
            run_demo(out, QUICK)
            torch.set_num_threads(1)
    return out
