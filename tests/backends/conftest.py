"""The tiny model and tokenizer every backend test starts from (one instance per test module)."""

import pytest
import torch

from spo_agents.backends.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(tokenizer, seed=0)


class ScriptedToolCloser(torch.nn.Module):
    """The tiny model, except that `</tool_call>` wins once the sequence reaches `position`."""

    def __init__(self, inner, tool_close_id, position):
        super().__init__()
        self.inner, self.config, self.tool_close_id, self.position = inner, inner.config, tool_close_id, position

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
        out.logits[position_ids[:, -1] >= self.position, -1, self.tool_close_id] += 1000.0
        return out


@pytest.fixture
def scripted_tool_closer():
    """`ScriptedToolCloser(model, tool_close_id, position)`: forces a tool-call close for stop tests."""
    return ScriptedToolCloser
