"""The tiny model and tokenizer every backend test starts from (one instance per test module)."""

import pytest

from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(tokenizer, seed=0)
