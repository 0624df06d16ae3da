"""What a run checks before the model loads, the learning-rate schedule, and --help-config."""

import json

import pytest

from spo_agents.cli import main
from spo_agents.learner.update import OptimConfig, PolicyUpdater, lr_factor
from spo_agents.trainer.config import TrainConfig

FAST = ["model=tiny", "warm_start=null", "env_kwargs={}", "batch_size=2", "rollout.num_slots=2",
        "rollout.max_tokens_per_turn=8", "rollout.max_tokens_per_episode=16", "checkpoint_every=100"]

ENV_MODULE = '''
import gymnasium
from spo_agents.env import Task, ToolEnv


def make(**kwargs):
    tasks = [Task(task_id=f"q{i}", prompt=f"Say {i}.", answer=str(i)) for i in range(8)]
    return ToolEnv({"train": tasks}, grader=lambda reply, task: float(task.answer in reply), **kwargs)


gymnasium.register("{name}", entry_point=make)
'''


def _train(tmp_path, *items, capsys=None):
    args = ["train", "--output-dir", str(tmp_path / "run"), "--no-progress"]
    for item in [*FAST, *items]:
        args += ["--set", item]
    return main(args)


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test: setup errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was checked")

    monkeypatch.setattr("spo_agents.trainer.loop.build_policy", refuse)
    monkeypatch.setattr("spo_agents.trainer.loop.ensure_warm_start", refuse)


def test_unregistered_env_id_fails_before_the_model_with_the_accepted_forms(tmp_path, no_model_load, capsys):
    assert _train(tmp_path, "env_id=mypkg/MyEnv-v0", "steps=1") == 2  # a user error: one line, exit code 2
    message = capsys.readouterr().err
    assert "'mypkg/MyEnv-v0' is not registered" in message and "module:EnvId" in message
    assert "path/to/file.py:EnvId" in message and "spo/Calculator-v0" in message
    assert _train(tmp_path, "env_id=mypkg:mypkg/MyEnv-v0", "steps=1") == 2
    assert "cannot import module 'mypkg'" in capsys.readouterr().err


def test_env_without_the_eval_split_fails_before_the_model(tmp_path, no_model_load, capsys):
    (tmp_path / "train_only_env.py").write_text(ENV_MODULE.replace("{name}", "setup_test/TrainOnly-v0"))
    assert _train(tmp_path, f"env_id={tmp_path / 'train_only_env.py'}:setup_test/TrainOnly-v0", "steps=1") == 2
    message = capsys.readouterr().err
    assert "split 'heldout'" in message and "eval.split" in message and "eval.enabled=false" in message


def test_env_from_a_file_path_trains_with_a_decaying_lr(tmp_path, capsys):
    (tmp_path / "my_env.py").write_text(ENV_MODULE.replace("{name}", "setup_test/FromFile-v0"))
    assert _train(tmp_path, f"env_id={tmp_path / 'my_env.py'}:setup_test/FromFile-v0", "eval.enabled=false",
                  "steps=4", "optim.lr=0.01", "optim.warmup_steps=1", "optim.schedule=linear") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs == pytest.approx([0.005, 0.01, 0.01 * 2 / 3, 0.01 / 3])


def test_lr_schedules():
    def factors(**kw):
        config = OptimConfig(lr=1.0, **kw)
        return [lr_factor(step, config, total_steps=10) for step in range(12)]

    assert factors() == [1.0] * 12
    assert factors(warmup_steps=3)[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors(schedule="linear")[:3] == pytest.approx([1.0, 0.9, 0.8]) and factors(schedule="linear")[10:] == [0, 0]
    cosine = factors(schedule="cosine", min_lr_ratio=0.1)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.55) and cosine[10:] == pytest.approx([0.1, 0.1])
    assert factors(schedule="linear", decay_steps=5)[5] == 0.0  # decay_steps wins over the run's steps
    with pytest.raises(ValueError):
        OptimConfig(schedule="exponential")


def test_updater_applies_the_schedule_and_resumes_it():
    import torch

    model = torch.nn.Linear(2, 1)
    config = OptimConfig(lr=0.1, schedule="linear", warmup_steps=0)
    updater = PolicyUpdater(model, config, total_steps=4)
    seen = []
    for _ in range(2):
        model(torch.ones(1, 2)).sum().backward()
        seen.append(updater.apply()["lr"])
    state = updater.state_dict()
    resumed = PolicyUpdater(model, config, total_steps=4)
    resumed.load_state_dict(state)
    model(torch.ones(1, 2)).sum().backward()
    seen.append(resumed.apply()["lr"])
    assert seen == pytest.approx([0.1, 0.075, 0.05])
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def _leaves(model, prefix=""):
    import pydantic

    for name, field in model.model_fields.items():
        nested = [t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
                  if isinstance(t, type) and issubclass(t, pydantic.BaseModel)]
        yield prefix + name
        if nested:
            yield from _leaves(nested[0], f"{prefix}{name}.")


def test_help_config_prints_every_field_with_a_description(capsys):
    assert main(["train", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split("  (")[0] for line in lines[0::2]]
    assert names == list(_leaves(TrainConfig))
    assert all(line.startswith("    ") and line.strip() for line in lines[1::2])
    assert "optim.schedule" in names and "rollout.num_slots" in names and "eval.split" in names
