"""The scripted FileSearch searcher: follows a task's chain through the tools, one call per turn.

It reads only what a model would see (the prompt, its own last tool call and that call's
output) and follows the pointer grammar of tasks.py, so it doubles as a check that every task
is solvable through the tools. Each hop's target is named only in the previous file (random
file and variable names, nodes that never name their service), so following the chain is the
searcher's optimal strategy; the calls it makes equal `metadata["oracle_calls"]`. It is not a
proven lower bound against every trick: in a small tree a lucky broad `grep` can reveal
several hops at once, which MAX_MATCHES (40 lines per grep) and the filler files keep rare.
"""

from __future__ import annotations

import json
import re

from spo_agents.env import parse_tool_calls

_START_PATH = re.compile(r"starts at (/\S+) and")
_START_FIND = re.compile(r"starts at the file `([^`]+)`, somewhere under (/\S+?),")
_ENV_DIR = re.compile(r"variables are defined in the files under (\S+)")
_VARIABLE = re.compile(r"^\$\{(\w+)\}$")
_GREP_LINE = re.compile(r"^[^:\n]+:\d+:(\w+)=(.*)$", re.MULTILINE)
_PROFILE = re.compile(r"^profile-(\d+)\.conf$", re.MULTILINE)
GIVE_UP = "I could not follow the configuration. \\boxed{unknown}"


def call(tool_name: str, **arguments: str) -> str:
    return f"<tool_call>{json.dumps({'name': tool_name, 'arguments': arguments})}</tool_call>"


def answer(value: str) -> str:
    return f"The setting that applies is \\boxed{{{value}}}."


def start(prompt: str) -> str:
    match = _START_PATH.search(prompt)
    if match:
        return call("cat", path=match.group(1))
    match = _START_FIND.search(prompt)
    if match:
        return call("find", name=match.group(1), path=match.group(2))
    return GIVE_UP


def follow_file(text: str, attribute: str) -> str:
    """The next call (or the answer) from the content of one file of the chain."""
    env_dir = _ENV_DIR.search(text)
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(" = "))
        value = value.split("    #")[0].strip()
        variable = _VARIABLE.match(value)
        if key == "include":
            return call("cat", path=value)
        if key == "include_name":
            return call("find", name=value, path=line.rsplit("under ", 1)[1].strip())
        if key == "profile_dir":
            return call("ls", path=value)
        if key in ("config_file", attribute) and variable and env_dir:
            return call("grep", pattern=f"{variable.group(1)}=", path=env_dir.group(1))
        if key == attribute:
            return answer(value)
    return GIVE_UP


def next_action(transcript: list[tuple[str, str]], attribute: str) -> str:
    """The optimal next turn given the transcript so far (system, user, then turns)."""
    prompt = next(text for role, text in transcript if role == "user")
    role, output = transcript[-1]
    if role != "tool":
        return start(prompt)
    calls = parse_tool_calls(transcript[-2][1]).calls
    if not calls or output.startswith("Error") or output == "(no matches)":
        return GIVE_UP
    name, arguments = calls[-1].name, calls[-1].arguments
    if name == "cat":
        return follow_file(output, attribute)
    if name == "find":
        return call("cat", path=output.splitlines()[0])
    if name == "ls":
        numbers = [int(n) for n in _PROFILE.findall(output)]
        return call("cat", path=f"{arguments['path']}/profile-{max(numbers):02d}.conf") if numbers else GIVE_UP
    match = _GREP_LINE.search(output)
    if match is None:
        return GIVE_UP
    value = match.group(2).strip()
    return call("cat", path=value) if value.startswith("/") else answer(value)
