"""`spo-agents demo`: play a few episodes of every built-in environment with a scripted policy.

The scripted policy is each environment's `oracle_action()` (the optimal next turn, computed
from the task), so the transcripts show the tool-call convention end to end without a model.
"""

from __future__ import annotations

import argparse

import gymnasium
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

import spo_agents  # noqa: F401  (registers the environments)
from spo_agents.cli.checks import positive_int
from spo_agents.env import registered_ids


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="play episodes of each built-in environment with a scripted policy")
    parser.add_argument("--episodes", type=positive_int, default=2, help="episodes per environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_demo)


def play_oracle_episode(env_id: str, seed: int = 0, task_id: str | None = None) -> tuple[list[tuple[str, str]], float]:
    """Play one episode with the environment's oracle; return (transcript, total reward)."""
    env = gymnasium.make(env_id, render_mode="ansi")
    try:
        base = env.unwrapped
        if not hasattr(base, "oracle_action"):
            raise TypeError(f"{env_id} has no scripted oracle_action()")
        env.reset(seed=seed, options={"task_id": task_id} if task_id else None)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(base.oracle_action())
            total += float(reward)
            done = terminated or truncated
        return list(base.transcript), total
    finally:
        env.close()


def print_transcript(env_id: str, transcript: list[tuple[str, str]], reward: float) -> None:
    colours = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "yellow"}
    lines = [f"[{colours.get(role, 'white')}]\\[{role}][/] {escape(text)}" for role, text in transcript]
    Console().print(Panel("\n".join(lines), title=escape(f"{env_id}  reward={reward:g}"), expand=False), markup=True)


def run_demo(args: argparse.Namespace) -> int:
    for env_id in registered_ids("spo"):
        for episode in range(args.episodes):
            try:
                transcript, reward = play_oracle_episode(env_id, seed=args.seed + episode)
            except TypeError as exc:
                Console().print(f"[dim]{exc}; skipped[/dim]")
                break
            print_transcript(env_id, transcript, reward)
    return 0
