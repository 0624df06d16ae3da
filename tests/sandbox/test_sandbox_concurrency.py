"""Many callers at once, crashed or hung helpers, and the pool's life cycle."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time

import pytest
from sandbox_checks import (SOLO_CONFIG, TEST_CONFIG, check_aftermath, orphaned_runners, snippet_processes,
                            wait_for)

import spo_agents.sandbox.pool as pool_module
from spo_agents.sandbox import ExecStatus, SandboxConfig, SandboxError, SandboxPool

MIXED_HOSTILE = ["while True: pass", "print('x' * 10**6)", "import ctypes; ctypes.string_at(0)", "1/0"]


def _unique(worker: int, index: int) -> tuple[str, str]:
    value = worker * 1000 + index
    return f"import time; time.sleep(0.01 * ({index} % 3)); print('tok', {value} * 3)", f"tok {value * 3}\n"


def test_many_threads_results_never_mixed(pool):
    errors: list[str] = []

    def worker(worker_id: int) -> None:
        for index in range(8):
            code, expected = _unique(worker_id, index)
            if index % 4 == 3:
                hostile = pool.run(MIXED_HOSTILE[worker_id % len(MIXED_HOSTILE)], timeout_s=0.5)
                if hostile.ok:
                    errors.append(f"hostile snippet succeeded: {hostile}")
            result = pool.run(code)
            if result.stdout != expected:
                errors.append(f"worker {worker_id} call {index}: {result.stdout!r} != {expected!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_asyncio_tasks_results_never_mixed_and_loop_not_blocked(pool):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        calls = [_unique(7, index) for index in range(30)]
        results = await asyncio.gather(*(pool.arun(code) for code, _ in calls),
                                       pool.arun("import time; time.sleep(0.5)"))
        tick_task.cancel()
        return calls, results, ticks

    calls, results, ticks = asyncio.run(main())
    assert [r.stdout for r in results[:-1]] == [expected for _, expected in calls]
    assert ticks >= 20, "the event loop was blocked while snippets ran"


def test_stdin_is_delivered_per_call(pool):
    results = [pool.run("print(input()[::-1])", stdin=f"abc{i}\n") for i in range(5)]
    assert [r.stdout for r in results] == [f"{i}cba\n" for i in range(5)]
    assert pool.run("import sys; print(sys.stdin.buffer.read())", stdin=b"\xff\x00").stdout == "b'\\xff\\x00'\n"


def test_crashed_idle_helper_is_replaced(pool):
    victim = pool.helper_pids()[0]
    os.kill(victim, signal.SIGKILL)
    results = [pool.run("print('ok')") for _ in range(2 * TEST_CONFIG.num_helpers)]
    assert all(r.stdout == "ok\n" for r in results)
    assert victim not in pool.helper_pids() and not os.path.exists(f"/proc/{victim}")


def test_helper_killed_during_a_call_is_replaced_and_the_call_retried_once():
    with SandboxPool(SOLO_CONFIG) as solo:
        victim = solo.helper_pids()[0]
        threading.Timer(0.3, os.kill, args=(victim, signal.SIGKILL)).start()
        start = time.monotonic()
        result = solo.run("import time\nend = time.monotonic() + 0.9\nwhile time.monotonic() < end: pass\n"
                          "print('done')")
        assert time.monotonic() - start < 0.3 + 0.9 + TEST_CONFIG.start_timeout_s
        assert result.stdout == "done\n"
        assert solo.helper_pids()[0] != victim and not os.path.exists(f"/proc/{victim}")
        if os.geteuid() == 0:  # the runner of the interrupted call died with its helper
            assert wait_for(lambda: orphaned_runners(SOLO_CONFIG, solo.helper_pids()) == [])


def test_helper_killed_during_a_session_call_gives_a_sandbox_error():
    with SandboxPool(SOLO_CONFIG) as solo, solo.session() as session:
        assert session.run("x = 1").ok
        victim = solo.helper_pids()[0]
        threading.Timer(0.3, os.kill, args=(victim, signal.SIGKILL)).start()
        result = session.run("import time; time.sleep(5)")
        assert result.status is ExecStatus.SANDBOX_ERROR and "crashed" in result.error
        assert result.session_reset and "sandbox error" in result.to_observation()
        assert "NameError" in session.run("print(x)").stderr  # a fresh interpreter
        assert solo.run("print(1 + 1)").stdout == "2\n"
        if os.geteuid() == 0:
            assert wait_for(lambda: snippet_processes(SOLO_CONFIG) == [])
            assert wait_for(lambda: orphaned_runners(SOLO_CONFIG, solo.helper_pids()) == [])


def test_hung_helper_is_killed_and_replaced(monkeypatch):
    monkeypatch.setattr(pool_module, "ANSWER_GRACE_S", 0.5)
    with SandboxPool(SOLO_CONFIG) as solo:
        victim = solo.helper_pids()[0]
        os.kill(victim, signal.SIGSTOP)
        start = time.monotonic()
        result = solo.run("print(1)", timeout_s=0.5)
        assert time.monotonic() - start < 3
        assert result.status is ExecStatus.SANDBOX_ERROR and "stopped answering" in result.error
        assert solo.run("print(2)").stdout == "2\n"
        assert victim not in solo.helper_pids() and not os.path.exists(f"/proc/{victim}")


def test_closed_pool_refuses_and_kills_its_helpers():
    solo = SandboxPool(SOLO_CONFIG)
    pids = solo.helper_pids()
    solo.close()
    with pytest.raises(SandboxError):
        solo.run("print(1)")
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids))


def test_garbage_collected_pool_kills_its_helpers():
    solo = SandboxPool(SOLO_CONFIG)
    pids = solo.helper_pids()
    del solo
    gc.collect()
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids))


def test_pool_refuses_use_in_a_forked_child(pool):
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            pool.run("print(1)")
            os.write(write_end, b"ran")
        except SandboxError:
            os.write(write_end, b"refused")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read_end, 10) == b"refused"
    assert pool.run("print(1)").stdout == "1\n"


def test_too_long_code_is_refused_with_a_clear_error(pool):
    result = pool.run("#" * (TEST_CONFIG.max_code_bytes + 1))
    assert result.status is ExecStatus.ERROR and "too long" in result.error


def test_timeout_override_per_call(pool):
    start = time.monotonic()
    result = pool.run("import time; time.sleep(5)", timeout_s=0.3)
    assert result.timed_out and "0.3 s" in result.error and time.monotonic() - start < 0.3 + 2
    check_aftermath(pool, result, time.monotonic() - start, 0.3)
    with pytest.raises(ValueError):
        pool.run("print(1)", timeout_s=0)


def test_config_overrides_in_constructor():
    with SandboxPool(SandboxConfig(num_helpers=1), timeout_s=0.5, preimport=("math",)) as solo:
        assert solo.config.timeout_s == 0.5
        assert solo.capabilities.preimported == ["math"]
        assert solo.run("import math; print(math.factorial(5))").stdout == "120\n"
