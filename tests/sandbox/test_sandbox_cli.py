"""`spo-agents sandbox check|run` and `spo-agents bench sandbox`, driven through argparse."""

from __future__ import annotations

import argparse
import json

import pytest

from spo_agents.cli import bench_sandbox, sandbox_cmd


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spo-agents")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sandbox_cmd.register(subparsers)
    bench = subparsers.add_parser("bench")
    bench_sandbox.register_bench(bench.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_reports_every_layer(capsys):
    assert run_cli(["sandbox", "check"]) == 0
    out = capsys.readouterr().out
    assert "isolated: yes" in out
    for text in ("network namespace", "PID namespace", "tmpfs", "rlimits", "unprivileged UID",
                 "cleared environment", "bubblewrap"):
        assert text in out
    # the layers of issue 16, each measured from inside a runner
    for text in ("[x] own IPC namespace per call/session", "[x] own network namespace per call/session",
                 "[x] socket families limited", "[x] memory of the whole call bounded",
                 "[x] the project's and environments' packages are hidden", "[x] /proc/1/cmdline and environ",
                 "call memory: at most"):
        assert text in out, out


def test_check_json(capsys):
    assert run_cli(["sandbox", "check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["isolated"] and report["mode"] in ("namespaces", "bwrap")
    assert all(report["layers"].values()) and report["memory"].startswith("at most"), report


def test_check_unisolated_fails(capsys):
    with pytest.warns(RuntimeWarning, match="UNISOLATED"):
        assert run_cli(["sandbox", "check", "--mode", "unisolated"]) == 1
    assert "WARNING" in capsys.readouterr().out


def test_run_prints_the_observation(capsys):
    assert run_cli(["sandbox", "run", "print(input() * 2)", "--stdin", "ab"]) == 0
    assert capsys.readouterr().out == "abab\n"
    assert run_cli(["sandbox", "run", "while True: pass", "--timeout", "0.3"]) == 1
    assert "[timed out after 0.3 s]" in capsys.readouterr().out


def test_run_json(capsys):
    assert run_cli(["sandbox", "run", "1/0", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "error" and result["error"] == "ZeroDivisionError: division by zero"


def test_bench_prints_a_table_then_one_json_line(capsys):
    assert run_cli(["bench", "sandbox", "--calls", "10", "--seconds", "0.3", "--helpers", "1,2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert {"sandbox_p50_ms", "fresh_python_p50_ms", "ratio", "throughput_per_s"} <= set(record)
    assert record["sandbox_p50_ms"] > 0 and record["fresh_python_p50_ms"] > 0
    assert set(record["throughput_per_s"]) == {"1", "2"}
    assert any("sandbox p50" in line for line in lines[:-1])
