import secrets

import pytest
from sandbox_checks import TEST_CONFIG

from spo_agents.sandbox import SandboxPool


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(TEST_CONFIG) as shared:
        yield shared


@pytest.fixture
def token() -> str:
    return "spotok" + secrets.token_hex(6)
