"""`spo-agents bench envs` runs and ends with its JSON line."""

import json

from spo_agents.cli import main


def test_bench_envs_prints_table_then_json(capsys):
    assert main(["bench", "envs", "--seconds", "0.2", "--grades", "20"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    for key in ("calculator_evals_per_s", "calculator_unique_evals_per_s", "grader_p50_ms", "grader_p95_ms"):
        assert payload[key] > 0
