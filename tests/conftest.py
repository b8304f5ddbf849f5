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
