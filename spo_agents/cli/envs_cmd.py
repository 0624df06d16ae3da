"""`spo-agents envs`: list registered environments, or show a sample episode of one."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from spo_agents.cli.checks import check_env, positive_int
from spo_agents.cli.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("envs", help="list registered environments; `envs show ID` plays a sample episode")
    parser.add_argument("--all", action="store_true", help="include every Gymnasium namespace, not only spo/")
    parser.set_defaults(func=list_envs)
    sub = parser.add_subparsers(dest="envs_command")
    show = sub.add_parser("show", help="print a sample episode played by the environment's scripted oracle policy")
    show.add_argument("env_id", help="e.g. spo/Calculator-v0")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--task-id", default=None, help="play this task instead of a sampled one")
    show.add_argument("--stats", action="store_true",
                      help="instead of one transcript, print the distribution of turns and tokens per episode "
                           "under the oracle over a sample of tasks (tokens ~ characters / 4)")
    show.add_argument("--samples", type=positive_int, default=200, help="tasks sampled for --stats")
    show.add_argument("--split", default="train", help="task split sampled for --stats")
    show.set_defaults(func=show_env)


def list_envs(args: argparse.Namespace) -> int:
    from spo_agents.env import describe_env, registered_ids

    table = Table(title="Registered environments")
    for column in ("id", "description", "tools", "tasks (train / heldout)"):
        table.add_column(column, overflow="fold")
    for env_id in registered_ids(None if args.all else "spo"):
        try:
            info = describe_env(env_id)
        except Exception as exc:  # one broken environment must not hide the others
            table.add_row(env_id, f"[red]failed to make: {exc}[/red]", "", "")
            continue
        splits = info.get("splits", {})
        counts = " / ".join(str(splits.get(name, 0)) for name in ("train", "heldout"))
        table.add_row(env_id, info["description"], ", ".join(info.get("tools", [])) or "-", counts)
    Console().print(table)
    return 0


def show_env(args: argparse.Namespace) -> int:
    check_env(args.env_id, {}, (args.split,) if args.stats else ())
    if args.stats:
        return show_stats(args)
    from spo_agents.cli.demo_cmd import play_oracle_episode, print_transcript

    try:
        transcript, reward = play_oracle_episode(args.env_id, seed=args.seed, task_id=args.task_id)
    except TypeError as exc:  # the environment has no scripted oracle
        raise UserError(str(exc)) from exc
    except (KeyError, ValueError) as exc:
        if args.task_id is None:
            raise  # not the user's doing
        raise UserError(f"{args.env_id} has no task {args.task_id!r} ({exc})") from exc
    print_transcript(args.env_id, transcript, reward)
    return 0


def show_stats(args: argparse.Namespace) -> int:
    import spo_agents  # noqa: F401  (registers the environments)
    from spo_agents.cli.env_stats import format_report, sample_oracle_episodes, stats_report

    episodes = sample_oracle_episodes(args.env_id, samples=args.samples, seed=args.seed, split=args.split)
    print(format_report(stats_report(args.env_id, episodes), [e.turns for e in episodes]))
    return 0
