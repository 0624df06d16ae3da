"""The reply the environment (and its reward) receives carries no end-of-turn token.

Before `ChatFormatter.reply_text`, the engine handed `env.step` the completion decoded with its
final `<|im_end|>`, so an exact-match reward scored every correct reply 0.
"""

import asyncio

import gymnasium

from spo_agents.backends.transformers_backend import TransformersBackend
from spo_agents.chat import ChatFormatter
from spo_agents.env import Task, ToolEnv
from spo_agents.rollout.config import RolloutConfig, RolloutMode
from spo_agents.rollout.engine import RolloutEngine

REPLIES: list[str] = []


def _recording_env(**kwargs):
    def grade(reply: str, task: Task) -> float:
        REPLIES.append(reply)
        return float(reply == task.answer)

    return ToolEnv([Task(task_id="t0", prompt="Say something.", answer="x")], grader=grade, **kwargs)


gymnasium.register("test_reply/Recording-v0", entry_point=_recording_env)


def test_reward_receives_the_reply_without_the_end_of_turn_token(model, tokenizer, scripted_tool_closer):
    formatter = ChatFormatter(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = formatter.initial_prompt_ids([{"role": "user", "content": "Say something."}])
    scripted = scripted_tool_closer(model, im_end, position=len(prompt) + 4)  # <|im_end|> as 5th token
    REPLIES.clear()
    with TransformersBackend(scripted, tokenizer) as backend:
        config = RolloutConfig(mode=RolloutMode.BATCH, group_size=1, num_slots=1, temperature=0.0, max_tokens_per_turn=20)
        engine = RolloutEngine("test_reply/Recording-v0", backend, formatter, config)
        try:
            [episode] = asyncio.run(engine.collect_batch(["t0"]))
        finally:
            engine.close()
    turn = episode.turns[-1]
    assert episode.error is None and turn.completion_ids[-1] == im_end and len(turn.completion_ids) > 1
    assert REPLIES == [formatter.decode(turn.completion_ids[:-1])] == [turn.completion_text]
    assert "<|im_end|>" not in REPLIES[0]


def test_reply_text_keeps_a_tool_call_close_and_inner_special_tokens(tokenizer):
    formatter = ChatFormatter(tokenizer)
    call = formatter.encode('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert formatter.reply_text(call) == formatter.decode(call)
    eos = formatter.encode("a<|im_end|>b<|im_end|>")
    assert formatter.reply_text(eos) == "a<|im_end|>b"
