"""Shared fixtures: tiny random-init BERT and RoBERTa models and tiny data, built with no downloads.

The builders themselves live in tests/helpers.py, which test modules import directly.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import (build_learnable_bert, build_tiny_model, write_cnn_dailymail,  # noqa: E402
                           write_mnli, write_squad, write_sst2)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    """A tiny gated T5 (2+2 layers, d 32) that generates the text-to-text label words."""
    return build_tiny_model(tmp_path_factory.mktemp("t5"), "t5", hidden=32, heads=4, ffn=64)


@pytest.fixture(scope="module")
def bert2bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT2BERT (2+2 layers, d 32) with the same vocabulary."""
    return build_tiny_model(tmp_path_factory.mktemp("b2b"), "bert2bert", hidden=32, heads=4, ffn=64)


@pytest.fixture(scope="session")
def learnable_bert_dir(tmp_path_factory) -> Path:
    return build_learnable_bert(tmp_path_factory.mktemp("learnable-bert"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_sst2(folder)
    write_mnli(folder)
    write_squad(folder)
    write_cnn_dailymail(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train ~50x faster on one thread when the CPUs are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_env_data_dir(monkeypatch):
    """CLI tests pass --data-dir explicitly; an inherited APTUNE_DATA_DIR must not leak in."""
    monkeypatch.delenv("APTUNE_DATA_DIR", raising=False)


@pytest.fixture(params=["bert", "roberta"])
def tiny_model_dir(request, tiny_bert_dir, tiny_roberta_dir) -> Path:
    return {"bert": tiny_bert_dir, "roberta": tiny_roberta_dir}[request.param]
