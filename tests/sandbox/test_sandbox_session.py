"""Stateful sessions: persistence, reset after a fatal call, cleanup at close."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from sandbox_checks import SOLO_CONFIG, TEST_CONFIG, requires_root, snippet_processes, wait_for

from spo_agents.sandbox import ExecStatus, SandboxError, SandboxPool
from spo_agents.sandbox.result import SESSION_RESET_NOTE


def test_variables_functions_and_imports_persist(pool):
    with pool.session() as session:
        assert session.run("import fractions\nx = 41\ndef double(v): return 2 * v").ok
        assert session.run("print(x + 1, double(21), fractions.Fraction(1, 3) * 3)").stdout == "42 42 1\n"
        assert session.run("x += 1").ok
        assert session.run("print(x)").stdout == "42\n"


def test_sessions_are_isolated_from_each_other_and_from_stateless_calls(pool):
    with pool.session() as first, pool.session() as second:
        first.run("secret = 'first'")
        assert "NameError" in second.run("print(secret)").stderr
        assert "NameError" in pool.run("print(secret)").stderr
        assert first.run("print(secret)").stdout == "first\n"
        assert first.runner_pid != second.runner_pid


def test_errors_and_sys_exit_keep_the_session(pool):
    with pool.session() as session:
        session.run("x = 1")
        failed = session.run("1/0")
        assert failed.status is ExecStatus.ERROR and not failed.session_reset
        exited = session.run("import sys; sys.exit(3)")
        assert exited.exit_code == 3 and not exited.session_reset
        assert session.run("print(x)").stdout == "1\n"


@pytest.mark.parametrize("fatal, status", [
    ("while True: pass", ExecStatus.TIMEOUT),
    ("while True: print('x' * 1000)", ExecStatus.OUTPUT_LIMIT),
    ("import os; os._exit(0)", ExecStatus.OK),
    ("import ctypes; ctypes.string_at(0)", ExecStatus.CRASHED),
])
def test_a_fatal_call_resets_the_session_and_says_so(pool, fatal, status):
    with pool.session() as session:
        session.run("x = 1")
        before = session.runner_pid
        start = time.monotonic()
        result = session.run(fatal)
        assert time.monotonic() - start < TEST_CONFIG.timeout_s + 2
        assert result.status is status and result.session_reset
        assert SESSION_RESET_NOTE in result.to_observation()
        after = session.run("print('x' in globals())")
        assert after.stdout == "False\n" and not after.session_reset
        assert session.runner_pid != before


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@requires_root
def test_close_kills_the_interpreter_and_everything_it_started(pool):
    session = pool.session()
    session.run("import subprocess\nkept = [subprocess.Popen(['sleep', '1000']) for _ in range(3)]")
    pid = session.runner_pid
    assert len(snippet_processes(TEST_CONFIG)) == 3  # the checker does see them while alive
    session.close()
    assert _dead(pid)  # at once: close() returns when the interpreter is gone (at most a zombie)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert wait_for(lambda: snippet_processes(TEST_CONFIG) == [])
    with pytest.raises(SandboxError):
        session.run("print(1)")


def test_closing_the_pool_closes_its_sessions():
    solo = SandboxPool(SOLO_CONFIG)
    session = solo.session()
    session.run("x = 1")
    pid = session.runner_pid
    solo.close()
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))


def test_sessions_and_stateless_calls_from_many_threads(pool):
    errors: list[str] = []

    def episode(n: int) -> None:
        with pool.session() as session:
            session.run(f"total = {n}")
            for step in range(5):
                session.run(f"total += {step}")
                if pool.run(f"print({n} * {step})").stdout != f"{n * step}\n":
                    errors.append("stateless call mixed up")
            result = session.run("print(total)")
            if result.stdout != f"{n + 10}\n":
                errors.append(f"session {n}: {result.stdout!r}")

    threads = [threading.Thread(target=episode, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_async_sessions(pool):
    async def episode(n: int) -> str:
        session = pool.session()
        try:
            await session.arun(f"v = {n}")
            return (await session.arun("print(v * 2)")).stdout
        finally:
            session.close()

    async def main():
        return await asyncio.gather(*(episode(n) for n in range(8)))

    assert asyncio.run(main()) == [f"{2 * n}\n" for n in range(8)]


def test_stdin_per_session_call(pool):
    with pool.session() as session:
        session.run("lines = []")
        session.run("lines.append(input())", stdin="first\n")
        session.run("lines.append(input())", stdin="second\n")
        assert session.run("print(lines)").stdout == "['first', 'second']\n"


def test_session_limit_is_enforced():
    with SandboxPool(SOLO_CONFIG.model_copy(update={"max_sessions": 2})) as solo:
        first, second = solo.session(), solo.session()
        with pytest.raises(SandboxError, match="too many open sessions"):
            solo.session()
        first.close()
        third = solo.session()
        assert third.run("print(3)").stdout == "3\n"
        second.close()
        third.close()
