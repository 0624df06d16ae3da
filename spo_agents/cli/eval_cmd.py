"""`spo-agents eval`'s report: runs `spo_agents.trainer.evaluate` (the work, which a script can
call too) and prints the metrics table; parsing and checks are in train_cmd.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def evaluate_and_report(args: argparse.Namespace, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from spo_agents.cli.errors import UserError
    from spo_agents.trainer import SetupError, evaluate

    try:
        payload = evaluate(args.model, args.env, env_kwargs=env_kwargs, split=args.split, tasks=args.tasks, k=args.k,
                           temperature=args.temperature, top_p=args.top_p, slots=args.slots,
                           base_model=args.base_model)
    except SetupError as exc:
        raise UserError(str(exc)) from exc
    table = Table(title=f"eval {payload['env']} ({payload['tasks']} tasks x {args.k} samples, T={args.temperature})")
    table.add_column("metric")
    table.add_column("value")
    for key, value in payload.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    Console(stderr=True).print(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    return payload
