"""Each TrainConfig setting reaches the code that uses it, or is rejected.

These are the proofs the registry in tests/learner/test_config_proofs.py points to for settings
whose component tests live elsewhere (the engine, the sampler, the tracker, the SFT step): here
the path from the config to the component is shown on a real Trainer, engine and warm start.
"""

import asyncio
import copy
import json
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from spo_agents.env import Task, ToolEnv
from spo_agents.rollout.config import EnvExecutor, RolloutConfig, RolloutMode
from spo_agents.rollout.engine import RolloutEngine
from spo_agents.rollout.scripted import ScriptedBackend
from spo_agents.trainer.config import load_config
from spo_agents.trainer.evaluate import EvalResult
from spo_agents.trainer.loop import Trainer

sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
from engine_test_envs import CycleTasks  # noqa: E402

SMALL_RUN = ["model=tiny", "warm_start=null", "rollout.max_tokens_per_turn=12", "rollout.max_tokens_per_episode=24"]


class CapturedEngine:
    """engine_factory that keeps the arguments instead of building an engine."""

    def __init__(self, env_id, backend, formatter, config, tasks, env_kwargs):
        self.env_id, self.config, self.tasks, self.env_kwargs = env_id, config, tasks, env_kwargs


def test_trainer_builds_every_part_from_its_settings(tmp_path, monkeypatch):
    table = tmp_path / "values.jsonl"
    table.write_text(json.dumps({"task_id": "calc-L1-00000", "successes": 0, "samples": 8}) + "\n")
    overrides = [
        *SMALL_RUN, f"output_dir={tmp_path / 'run'}", "seed=3", "env_kwargs={difficulty: 1, num_tasks: 50}",
        f"value_table={table}", "tracker.init_smoothed=false", "tracker.rho_min=0.9",
        "tracker.prior_alpha=2", "tracker.prior_beta=6", "tracker.drift_cache_max_tasks=7",
        "tracker.drift_cache_max_tokens_per_episode=9", "tracker.drift_cache_max_total_tokens=11",
        "sampler.eps=0.3", "sampler.gamma=0.5", "sampler.max_in_flight_per_task=2", "sampler.seed=5",
        "optim.lr=3e-4", "optim.weight_decay=0.1", "optim.betas=[0.8, 0.9]", "optim.microbatch_tokens=64",
        "optim.temperature=0.7", "loss.kl_coef=0.5", "advantage.running_moments=ema", "advantage.ema_decay=0.5",
        "batch_size=5", "rollout.num_slots=3", "rollout.max_context_tokens=99", "rollout.episode_timeout_s=7",
        "rollout.env_step_timeout_s=6", "rollout.env_executor=process", "rollout.env_workers=2",
        "rollout.temperature=0.9", "rollout.top_p=0.8", "rollout.top_k=4", "rollout.max_pending_episodes=13",
        "rollout.seed=11", "eval.split=train", "eval.num_tasks=3", "eval.temperature=0.4", "transcripts=1",
    ]
    trainer = Trainer(load_config(None, overrides), show_progress=False, engine_factory=CapturedEngine)
    try:
        assert 30 < len(trainer.train_ids) < 50  # env_kwargs: 50 tasks, about 80% of them train
        assert trainer.tracker.value("calc-L1-00000") == 0.0  # value_table, unsmoothed k / n0
        assert trainer.tracker.n_eff("calc-L1-00000") == pytest.approx(10.0)  # N0 = 1 / (1 - rho_min)
        assert trainer.tracker.value("calc-L1-00001") == pytest.approx(0.25)  # prior 2 / (2 + 6)
        cache = trainer.drift_cache
        assert (cache.max_tasks, cache.max_tokens_per_episode, cache.max_total_tokens) == (7, 9, 11)
        sampler = trainer.sampler
        assert (sampler.eps, sampler.gamma, sampler.max_in_flight_per_task) == (0.3, 0.5, 2)
        assert sampler.rng.random() == np.random.default_rng(5).random()
        assert trainer.uniform.rng.random() == np.random.default_rng(3).random()  # seed
        group = trainer.updater.optimizer.param_groups[0]
        assert (group["lr"], group["weight_decay"], group["betas"]) == (3e-4, 0.1, (0.8, 0.9))
        assert trainer.updater.optim_config.microbatch_tokens == 64
        assert trainer.updater.optim_config.temperature == 0.7
        assert trainer.updater.reference_model is not None  # loss.kl_coef > 0 keeps the reference policy
        assert trainer.spo.moments.mode.value == "ema" and trainer.spo.moments.ema_decay == 0.5

        spo_engine = trainer._engine()
        expected = trainer.config.rollout.model_dump()
        expected.update(mode=RolloutMode.STREAM, group_size=trainer.config.group_size, max_unconsumed=3 + 5)
        assert spo_engine.config.model_dump() == expected  # every rollout setting, as written
        assert spo_engine.env_kwargs == {"difficulty": 1, "num_tasks": 50, "split": "train"}
        assert spo_engine.tasks.sampler is trainer.sampler  # algo spo: prioritised sampling
        trainer.config = load_config(None, [*overrides, "algo=grpo", "group_size=5", "grpo_mode=group",
                                            "rollout.max_unconsumed=17"])
        grpo_engine = trainer._engine()
        assert grpo_engine.tasks is trainer.uniform and grpo_engine.config.mode is RolloutMode.GROUP
        assert (grpo_engine.config.group_size, grpo_engine.config.max_unconsumed) == (5, 17)
        trainer.config = load_config(None, [*overrides, "algo=grpo", "group_size=5", "grpo_mode=batch"])
        assert trainer._engine().config.mode is RolloutMode.BATCH

        seen = {}

        async def fake_evaluate(backend, formatter, env_id, env_kwargs, ids, **kwargs):
            seen.update(env_kwargs=env_kwargs, ids=ids, **kwargs)
            return EvalResult(len(ids), 1, {"accuracy": 0.0}, [])

        monkeypatch.setattr("spo_agents.trainer.loop.evaluate", fake_evaluate)
        asyncio.run(trainer.evaluate())
        assert seen["env_kwargs"]["split"] == "train" and len(seen["ids"]) == 3
        assert seen["temperature"] == 0.4 and seen["rollout"] == trainer.config.rollout
        trainer.config = load_config(None, [*overrides, "eval.enabled=false"])
        seen.clear()
        assert asyncio.run(trainer.evaluate()) == {} and not seen
    finally:
        trainer.policy.backend.close()


def test_run_level_settings_shape_the_run(tmp_path):
    run = tmp_path / "run"
    config = load_config(None, [*SMALL_RUN, f"output_dir={run}", "steps=2", "batch_size=3", "checkpoint_every=1",
                                "eval.every_steps=1", "eval.num_tasks=2", "transcripts=1", "rollout.num_slots=3",
                                "env_kwargs={difficulty: 1, num_tasks: 50}"])
    summary = asyncio.run(Trainer(config, show_progress=False).run())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert summary["steps"] == 2 and [r["episodes/total"] for r in train] == [3, 6]  # steps, batch_size
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 1, 2]  # eval.every_steps = 1
    assert all(r["eval/tasks"] == 2 for r in records if r["kind"] == "eval")  # eval.num_tasks
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    transcripts = sorted((run / "transcripts").glob("*.md"))  # output_dir, transcripts = 1 episode each
    assert len(transcripts) == 3 and all(t.read_text().count("### task ") == 1 for t in transcripts)


@pytest.mark.parametrize("override, message", [
    ("rollout.mode=group", "rollout.mode is set by the trainer"),
    ("rollout.group_size=2", "rollout.group_size is set by the trainer"),
    ("warm_start={output_dir: elsewhere}", "warm_start.output_dir .* is ignored"),
    ("generation_workers=2", "generation_workers counts Ray generation replicas"),
    ("generation_url=http://127.0.0.1:1", "generation_url, generation_server and generation_weights_dir are for"),
    ("device=tpu", "device must be cpu, cuda or cuda:N"),
    ("warm_start={device: gpu}", "device must be cpu, cuda or cuda:N"),
    ("warm_start={tiny_tokenizer_env_episodes: 10, tiny_digit_tokens: false}", "tiny_tokenizer_env_episodes"),
    ("warm_start={direct_answers: {fraction: 0.5, pattern: x}}", "pattern selects tool calls: it needs scope"),
    ("warm_start={direct_answers: {fraction: 0.5, scope: call, pattern: '('}}", "not a valid regex"),
])
def test_settings_no_code_would_read_are_rejected(override, message):
    base = ["model=runs/some-folder"] if override.startswith("warm_start") else []
    with pytest.raises(ValueError, match=message):
        load_config(None, [*base, override])


def test_share_prefix_set_with_the_sharded_learner_is_refused():
    with pytest.raises(ValueError, match="optim.share_prefix is off with learner_parallel: fsdp"):
        load_config(None, ["learner_parallel=fsdp", "optim.share_prefix=true"])
    # left at its default (null: on, except here) it is no error; the sharded updater turns it off
    assert load_config(None, ["learner_parallel=fsdp"]).optim.share_prefix is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_trains_on_the_gpu(tmp_path):
    config = load_config(None, [*SMALL_RUN, "device=cuda", "steps=1", "batch_size=2", "rollout.num_slots=2",
                                "eval.enabled=false", f"output_dir={tmp_path}"])
    trainer = Trainer(config, show_progress=False)
    assert next(trainer.policy.train_model.parameters()).device.type == "cuda"
    assert asyncio.run(trainer.run())["steps"] == 1


class SeedRecordingEnv(ToolEnv):
    """One-turn env that records the seeds its resets get."""

    seeds: list = []

    def __init__(self, split="train", **kwargs):
        tasks = {"train": [Task(task_id=f"t{i}", prompt="say hi") for i in range(4)]}
        super().__init__(tasks, grader=lambda reply, task: 1.0, split=split, max_turns=1, **kwargs)

    def reset(self, *, seed=None, options=None):
        SeedRecordingEnv.seeds.append(seed)
        return super().reset(seed=seed, options=options)


gymnasium.register(id="settingstest/Seeds-v0", entry_point=SeedRecordingEnv)


class RecordingBackend(ScriptedBackend):
    def __init__(self):
        super().__init__(lambda turns: "x" * 200)
        self.params = []

    async def generate(self, prompt_ids, params):
        self.params.append((len(prompt_ids), params))
        return await super().generate(prompt_ids, params)


def test_rollout_settings_reach_the_engine_and_the_backend():
    def play(config, n):
        backend = RecordingBackend()
        engine = RolloutEngine("settingstest/Seeds-v0", backend, backend.formatter, config, CycleTasks(["t0", "t1"]))

        async def episodes():
            async with engine:
                return [await engine.get() for _ in range(n)]

        try:
            return asyncio.run(episodes()), backend, engine
        finally:
            engine.close()

    (probe,), _, _ = play(RolloutConfig(num_slots=1), 1)
    prompt_length = len(probe.turns[0].prompt_ids)
    SeedRecordingEnv.seeds.clear()
    config = RolloutConfig(num_slots=1, temperature=0.7, top_p=0.9, top_k=5, seed=40, env_workers=3,
                           max_tokens_per_turn=500, max_context_tokens=prompt_length + 100,
                           env_executor=EnvExecutor.THREAD)
    episodes, backend, engine = play(config, 2)
    assert [e.error for e in episodes] == [None, None]
    assert SeedRecordingEnv.seeds[:2] == [40, 41]  # rollout.seed: one reset seed per episode from it
    params = backend.params[0][1]
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.9, 5)
    assert params.max_new_tokens == 100  # max_context_tokens binds before max_tokens_per_turn
    assert all(e.num_tokens == prompt_length + 100 and e.truncated for e in episodes)
    assert engine.thread_pool._max_workers == 3  # rollout.env_workers


def test_lora_settings_shape_the_adapters():
    pytest.importorskip("peft")
    from spo_agents.backends.models import load_model
    from spo_agents.trainer.lora import LoraSettings, wrap_with_lora

    base = load_model("tiny", seed=0).model
    wrapped = wrap_with_lora(copy.deepcopy(base), LoraSettings(r=3, alpha=6.0, dropout=0.25, target_modules=["v_proj"]))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in wrapped.named_parameters() if "lora_A" in name}
    assert adapted and all(name.endswith("v_proj") for name in adapted)  # target_modules
    layer = wrapped.get_submodule(next(iter(adapted)))
    assert layer.lora_A["default"].weight.shape[0] == 3  # r
    assert layer.scaling["default"] == pytest.approx(6.0 / 3)  # alpha / r
    assert layer.lora_dropout["default"].p == 0.25  # dropout


def _sft(tmp_path, name, monkeypatch, **settings):
    """A small warm start; returns its folder, marker and the (rows, microbatch_tokens) of each loss call."""
    from spo_agents.trainer import sft

    calls, real = [], sft.demonstration_loss

    def spy(model, demos, microbatch_tokens, device="cpu", backward=False):
        calls.append((len(demos), microbatch_tokens, device))
        return real(model, demos, microbatch_tokens, device, backward)

    monkeypatch.setattr(sft, "demonstration_loss", spy)
    small = dict(tiny_hidden_size=32, tiny_layers=1, num_demos=8, steps=2, batch_size=4, output_dir=str(tmp_path / name))
    sft.run_sft(sft.SFTConfig(**{**small, **settings}), log=lambda _: None)
    folder = tmp_path / name
    return folder, json.loads((folder / sft.SFT_MARKER).read_text()), calls


def test_warm_start_settings_shape_the_warm_start(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    from spo_agents.chat import ChatFormatter, load_template
    from spo_agents.trainer import sft

    base, _, base_calls = _sft(tmp_path, "base", monkeypatch)
    shaped, marker, calls = _sft(tmp_path, "shaped", monkeypatch, tiny_hidden_size=48, tiny_layers=2,
                                 tiny_digit_tokens=False, chat_template="chatml_tools", num_demos=6, steps=3,
                                 batch_size=2, microbatch_tokens=100, env_id="spo/ChainCalc-v0",
                                 env_kwargs={"num_tasks": 60})
    model_config = AutoConfig.from_pretrained(shaped)
    assert (model_config.hidden_size, model_config.num_hidden_layers) == (48, 2)  # tiny_hidden_size, tiny_layers
    digits = [len(AutoTokenizer.from_pretrained(folder).encode("123456", add_special_tokens=False))
              for folder in (base, shaped)]
    assert digits[0] == 6 and digits[1] < 6  # tiny_digit_tokens: one token per digit, or BPE merges
    assert AutoTokenizer.from_pretrained(shaped).chat_template == load_template("chatml_tools")  # chat_template
    assert (marker["demonstrations"], marker["steps"]) == (6, 3)  # num_demos, steps
    assert (marker["env_id"], marker["env_kwargs"]) == ("spo/ChainCalc-v0", {"num_tasks": 60})  # env_id, env_kwargs
    assert "ChainCalc" not in (base / sft.SFT_MARKER).read_text()
    train_calls = [c for c in calls if c[0] <= 2]
    assert len(train_calls) == 3 and all(rows == 2 and tokens == 100 for rows, tokens, _ in train_calls)
    assert {c[2] for c in base_calls + calls} == {"cpu"}  # device
    assert sft.build_base(sft.SFTConfig(model=str(shaped))).model.config.hidden_size == 48  # model: a folder
    # optimiser settings: the same model and demonstrations, one setting changed at a time
    loaded = sft.build_base(sft.SFTConfig(tiny_hidden_size=32, tiny_layers=1))
    demos = sft.demonstrations(ChatFormatter(loaded.tokenizer, "chatml_compact"), "spo/Calculator-v0",
                               {"difficulty": 1}, 8)

    def trained(**setting):
        model = copy.deepcopy(loaded.model)
        sft.train_on_demonstrations(model, demos, sft.SFTConfig(steps=2, batch_size=4, **setting))
        return model.state_dict()

    reference = trained()
    for setting in ({"lr": 3e-2}, {"weight_decay": 0.5}, {"grad_clip": 1e-7}, {"seed": 1}):
        weights = trained(**setting)
        assert any(not torch.equal(weights[k], reference[k]) for k in reference), setting


def test_generation_and_generation_url_choose_the_backend():
    from spo_agents.backends.openai_client import OpenAICompatibleBackend
    from spo_agents.backends.transformers_backend import TransformersBackend
    from spo_agents.trainer.parts import build_policy

    config = load_config(None, ["generation=openai", "generation_url=http://127.0.0.1:9/v1"])
    remote = build_policy("tiny", generation=config.generation.value, generation_url=config.generation_url)
    local = build_policy("tiny", generation=load_config(None, []).generation.value)
    try:
        assert isinstance(remote.backend, OpenAICompatibleBackend) and remote.backend.base_url == "http://127.0.0.1:9"
        assert isinstance(local.backend, TransformersBackend)
    finally:
        remote.backend.close()
        local.backend.close()


def test_train_tasks_fixes_the_pool_that_training_and_estimate_values_revisit(tmp_path):
    from spo_agents.trainer.estimate import estimate_values
    from spo_agents.trainer.parts import SetupError, task_ids

    overrides = [*SMALL_RUN, "env_kwargs={difficulty: 1, num_tasks: 60}", "train_tasks=4", "steps=3",
                 "batch_size=4", "rollout.num_slots=4", "eval.enabled=false", f"output_dir={tmp_path / 'run'}"]
    config = load_config(None, overrides)
    pool = task_ids("spo/Calculator-v0", {"difficulty": 1, "num_tasks": 60}, "train")[:4]
    trainer = Trainer(config, show_progress=False)
    assert trainer.train_ids == pool and trainer.sampler.task_ids == pool
    asyncio.run(trainer.run())
    assert set(trainer.tracker.task_ids()) <= set(pool) and len(set(trainer.tracker.task_ids())) >= 3
    assert asyncio.run(estimate_values(config, tmp_path / "values.jsonl", n0=2)) == 4  # the same pool
    rows = [json.loads(line)["task_id"] for line in (tmp_path / "values.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(pool)
    with pytest.raises(SetupError, match="has only"):
        Trainer(load_config(None, [*overrides[:-1], "train_tasks=1000", f"output_dir={tmp_path / 'x'}"]))
