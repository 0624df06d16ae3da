"""The three documented ways to add an environment, each run through gymnasium.make."""

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_subclass_way():
    runpy.run_path(str(EXAMPLES / "custom_env_subclass.py"))
    env = gymnasium.make("examples/LetterCount-v0")
    observation, info = env.reset(options={"task_id": "mississippi-s"})
    assert "mississippi" in observation and info["tools"][0]["function"]["name"] == "count_letter"
    tool_output, reward, terminated, truncated, _ = env.step(
        '<tool_call>{"name": "count_letter", "arguments": {"word": "mississippi", "letter": "s"}}</tool_call>'
    )
    assert tool_output == "4" and (reward, terminated, truncated) == (0.0, False, False)
    _, reward, terminated, truncated, _ = env.step("\\boxed{4}")
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_typed_tool_functions_way():
    runpy.run_path(str(EXAMPLES / "custom_env_tools.py"))
    env = gymnasium.make("examples/UnitConversion-v0")
    _, info = env.reset(options={"task_id": "conv-3"})
    params = info["tools"][0]["function"]["parameters"]
    assert params["properties"]["value"]["type"] == "number"
    bad, *_ = env.step('<tool_call>{"name": "convert_units", "arguments": {"value": 3, "unit_from": "mi", "unit_to": "cm"}}</tool_call>')
    assert bad.startswith("Error: tool 'convert_units' failed: ValueError")
    good, *_ = env.step('<tool_call>{"name": "convert_units", "arguments": {"value": 3, "unit_from": "km", "unit_to": "cm"}}</tool_call>')
    assert good == "300000"
    assert env.step("\\boxed{300000}")[1] == 1.0


def test_entry_point_plugin_way(tmp_path):
    """A tiny package advertised through the `spo_agents.envs` entry-point group, found from a
    fresh interpreter without installing anything: a .dist-info folder on sys.path is exactly
    what pip would create."""
    dist_info = tmp_path / "spo_acme_envs-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: spo-acme-envs\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[spo_agents.envs]\nacme = spo_acme_envs:register_envs\n")
    code = textwrap.dedent(
        """
        import gymnasium
        import spo_agents
        env = gymnasium.make("acme/Echo-v0")
        obs, info = env.reset(options={"task_id": "alpha"})
        out, *_ = env.step('<tool_call>{"name": "shout", "arguments": {"text": "alpha"}}</tool_call>')
        print(out, env.step("\\\\boxed{ALPHA}")[1])
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLES / "plugin_package")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ALPHA", "1.0"]


def test_fresh_interpreter_make_with_module_prefix():
    code = 'import gymnasium; e = gymnasium.make("spo_agents:spo/Calculator-v0"); print(e.reset(seed=0)[1]["task_id"])'
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("calc-")


def test_broken_plugin_warns_but_does_not_break_import(tmp_path):
    dist_info = tmp_path / "broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[spo_agents.envs]\nbroken = no_such_module_xyz:register\n")
    code = "import warnings; warnings.simplefilter('always'); import spo_agents, gymnasium; gymnasium.make('spo/Calculator-v0'); print('ok')"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok"
    assert "plugin 'broken' failed to load" in result.stderr
