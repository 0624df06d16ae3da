"""Pure pieces: observations, outcome classification, config, mode choice, seccomp, root plan."""

from __future__ import annotations

import os
import signal
import struct

import pydantic
import pytest

from spo_agents.sandbox import ExecResult, ExecStatus, IsolationMode, SandboxConfig, truncate_middle
from spo_agents.sandbox.pool import candidate_modes
from spo_agents.sandbox.result import classify
from spo_agents.sandbox.rootfs import hidden_entries, mask_content, plan_exposures
from spo_agents.sandbox.seccomp import OPTIONAL, RET_ALLOW, RET_ERRNO, filter_program


def make(**fields) -> ExecResult:
    base = dict(stdout="", stderr="", exit_code=0, signal=None, timed_out=False, truncated=False, duration_s=0.01,
                error=None, status=ExecStatus.OK)
    return ExecResult(**{**base, **fields})


@pytest.mark.parametrize("fields, observation", [
    (dict(stdout="42\n"), "42"),
    (dict(), "[no output]"),
    (dict(stdout="partial\n", status=ExecStatus.TIMEOUT, timed_out=True, error="timed out after 2 s"),
     "partial\n[timed out after 2 s]"),
    (dict(stderr="Traceback ...\nZeroDivisionError: division by zero\n", exit_code=1, status=ExecStatus.ERROR,
          error="ZeroDivisionError: division by zero"),
     "[stderr]\nTraceback ...\nZeroDivisionError: division by zero\n[exit code 1]"),
    (dict(exit_code=None, signal=11, status=ExecStatus.CRASHED, error="segmentation fault (SIGSEGV)"),
     "[segmentation fault (SIGSEGV)]"),
    (dict(status=ExecStatus.SANDBOX_ERROR, error="helper crashed", session_reset=True),
     "[sandbox error: helper crashed]\n[the session was restarted: variables from earlier calls are lost]"),
    (dict(stdout="a\x00b\x1b[31m\x7f\tc\n"), "a\\x00b\\x1b[31m\\x7f\tc"),
])
def test_observations(fields, observation):
    assert make(**fields).to_observation() == observation


def test_observation_keeps_head_and_tail_within_the_limit():
    text = "".join(f"line {i}\n" for i in range(10000))
    observation = make(stdout=text).to_observation(max_chars=500)
    assert len(observation) <= 500
    assert observation.startswith("line 0\n") and observation.endswith("line 9999")
    assert "characters omitted" in observation


def test_truncate_middle():
    assert truncate_middle("short", 10) == "short"
    cut = truncate_middle("x" * 50 + "y" * 50, 60)
    assert len(cut) <= 60 and cut.startswith("x") and cut.endswith("y")
    omitted = int(cut.split("[... ")[1].split(" ")[0])
    assert omitted + cut.count("x") + cut.count("y") == 100


@pytest.mark.parametrize("args, kwargs, status, error", [
    ((0, None), {}, ExecStatus.OK, None),
    ((1, None), {"stderr": "Traceback\nValueError: bad\n"}, ExecStatus.ERROR, "ValueError: bad"),
    ((1, None), {"stderr": "custom message\n"}, ExecStatus.ERROR, "exited with code 1"),
    ((3, None), {"stderr": ""}, ExecStatus.ERROR, "exited with code 3"),
    ((None, signal.SIGSEGV), {}, ExecStatus.CRASHED, "segmentation fault (SIGSEGV)"),
    ((None, signal.SIGXCPU), {}, ExecStatus.CRASHED, "CPU time limit exceeded (SIGXCPU)"),
    ((None, signal.SIGKILL), {"timed_out": True}, ExecStatus.TIMEOUT, "timed out after 2 s"),
    ((None, signal.SIGKILL), {"truncated": True}, ExecStatus.OUTPUT_LIMIT,
     "output limit of 100 bytes exceeded; the process was stopped"),
    ((121, None), {"setup_error": "OSError: mount"}, ExecStatus.SANDBOX_ERROR, "sandbox setup failed: OSError: mount"),
    ((None, None), {"violation": "a status frame of 9 bytes"}, ExecStatus.ERROR,
     "the code wrote to the sandbox's status channel (fd 4: a status frame of 9 bytes); its interpreter was stopped"),
    ((None, None), {"status_lost": True}, ExecStatus.SANDBOX_ERROR,
     "the sandboxed interpreter is gone and its supervisor with it"),
    ((None, None), {}, ExecStatus.SANDBOX_ERROR, "the sandboxed process ended without an exit status"),
    ((None, signal.SIGKILL), {"oom_killed": True, "call_memory_mb": 300}, ExecStatus.CRASHED,
     "out of memory: the call's memory limit (300 MB) was exceeded"),
])
def test_classify(args, kwargs, status, error):
    options = dict(timed_out=False, truncated=False, timeout_s=2.0, output_limit_bytes=100, stderr="")
    assert classify(*args, **{**options, **kwargs}) == (status, error)


def test_result_round_trips_through_the_wire_format():
    header = {"status": "ok", "exit_code": 0, "signal": None, "timed_out": False, "truncated": False,
              "duration_s": 0.5, "error": None, "stdout_len": 3, "session_reset": False}
    result = ExecResult.from_wire(header, b"ab\xffsecond")
    assert result.stdout == "ab\ufffd" and result.stderr == "second" and result.ok


def test_config_validation():
    assert SandboxConfig().timeout_s == 5.0
    with pytest.raises(pydantic.ValidationError):
        SandboxConfig(timeout_s=0)
    with pytest.raises(pydantic.ValidationError):
        SandboxConfig(unknown_field=1)
    with pytest.raises(pydantic.ValidationError):
        SandboxConfig(uid_base=2**32 - 10)
    config = SandboxConfig(num_helpers=3)
    assert [config.slot_uid(i) for i in range(3)] == [config.uid_base + i for i in range(3)]
    assert config.session_uid(0) == config.uid_base + 3


def test_candidate_modes():
    assert candidate_modes(SandboxConfig(), "/usr/bin/bwrap") == [IsolationMode.NAMESPACES, IsolationMode.BWRAP]
    assert candidate_modes(SandboxConfig(), None) == [IsolationMode.NAMESPACES]
    assert candidate_modes(SandboxConfig(allow_unisolated=True), None) == [IsolationMode.NAMESPACES,
                                                                           IsolationMode.UNISOLATED]
    assert candidate_modes(SandboxConfig(mode="unisolated"), "/usr/bin/bwrap") == [IsolationMode.UNISOLATED]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_is_well_formed(machine):
    program = filter_program(machine)
    assert len(program) % 8 == 0 and 20 < len(program) // 8 < 4096
    instructions = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    for index, (code, jt, jf, _) in enumerate(instructions):
        if code & 0x07 == 0x05:  # jumps must land inside the program
            assert index + 1 + max(jt, jf) < len(instructions)
    assert instructions[-1][0] == 0x06  # ends with a return
    assert filter_program("sparc") is None


def run_filter(program: bytes, data: dict) -> int:
    """A classic-BPF interpreter for the instructions the filter uses, over a seccomp_data dict."""
    words = {0: data["nr"], 4: data["arch"], **{16 + 8 * i: arg & 0xFFFFFFFF for i, arg in enumerate(data["args"])}}
    instructions = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        if code == 0x20:
            accumulator = words.get(k, 0)
        elif code == 0x54:
            accumulator &= k
        elif code in (0x15, 0x35):
            taken = accumulator == k if code == 0x15 else accumulator >= k
            pc += jt if taken else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


SECCOMP_CASES = [  # (name, x86_64 nr, aarch64 nr, args, deny, expected)
    ("vsock", 41, 198, [40, 1, 0], (), RET_ERRNO | 97), ("packet", 41, 198, [17, 3, 0], (), RET_ERRNO | 97),
    ("alg", 41, 198, [38, 5, 0], (), RET_ERRNO | 97), ("netlink diag", 41, 198, [16, 3, 4], (), RET_ERRNO | 97),
    ("netlink route", 41, 198, [16, 3, 0], (), RET_ALLOW), ("inet", 41, 198, [2, 1, 0], (), RET_ALLOW),
    ("inet6", 41, 198, [10, 2, 0], (), RET_ALLOW), ("unix", 41, 198, [1, 1, 0], (), RET_ALLOW),
    ("socketpair unix", 53, 199, [1, 1, 0], (), RET_ALLOW), ("socketpair vsock", 53, 199, [40, 1, 0], (),
                                                                RET_ERRNO | 97),
    ("memfd allowed", 319, 279, [0, 0, 0], (), RET_ALLOW),
    ("memfd denied", 319, 279, [0, 0, 0], ("memfd_create",), RET_ERRNO | 1),
    ("shmget denied", 29, 194, [0, 4096, 0], ("shmget", "msgget"), RET_ERRNO | 1),
    ("clone newuser", 56, 220, [0x10000000, 0, 0], (), RET_ERRNO | 1), ("clone thread", 56, 220, [0x3D0F00, 0, 0],
                                                                         (), RET_ALLOW),
    ("unshare", 272, 97, [0, 0, 0], (), RET_ERRNO | 1), ("read", 0, 63, [0, 0, 0], (), RET_ALLOW),
]


@pytest.mark.parametrize("machine, column, arch", [("x86_64", 0, 0xC000003E), ("aarch64", 1, 0xC00000B7)])
@pytest.mark.parametrize("name, x86_nr, arm_nr, args, deny, expected", SECCOMP_CASES, ids=[c[0] for c in SECCOMP_CASES])
def test_seccomp_decisions(machine, column, arch, name, x86_nr, arm_nr, args, deny, expected):
    program = filter_program(machine, deny=deny)
    assert run_filter(program, {"nr": (x86_nr, arm_nr)[column], "arch": arch, "args": args}) == expected
    assert run_filter(program, {"nr": 0, "arch": 0x40000003, "args": [0, 0, 0]}) == RET_ERRNO | 1  # i386 ABI


def test_seccomp_optional_names_are_checked():
    assert set(OPTIONAL) == {"memfd_create", "shmget", "msgget"}
    with pytest.raises(ValueError, match="not optional"):
        filter_program("x86_64", deny=("read",))


def test_hidden_entries_cover_packages_metadata_modules_and_editable_files(tmp_path):
    site = tmp_path / "site-packages"
    for directory in ("spo_agents", "spo_agents-0.1.0.dist-info", "spo_env_calculator", "numpy", "spo_agentsx"):
        (site / directory).mkdir(parents=True)
    (site / "spo_agents" / "__init__.py").write_text("")
    for name in ("spo_env_single.py", "__editable__.spo_agents-0.1.0.pth", "__editable___spo_agents_0_1_0_finder.py",
                 "six.py", "distutils-precedence.pth"):
        (site / name).write_text("")
    found = {os.path.basename(path): kind for kind, path in hidden_entries([str(site)], ["spo_agents", "spo_env_*"])}
    assert found == {"spo_agents": "package", "spo_agents-0.1.0.dist-info": "directory",
                     "spo_env_calculator": "package", "spo_env_single.py": "module",
                     "__editable__.spo_agents-0.1.0.pth": "file", "__editable___spo_agents_0_1_0_finder.py": "file"}
    assert b"ModuleNotFoundError" in mask_content("package", str(site / "spo_agents"))
    assert mask_content("file", str(site / "x.pth")) == b""


def test_root_plan_recreates_symlinks_and_never_binds_through_them(tmp_path):
    real = tmp_path / "real" / "lib"
    real.mkdir(parents=True)
    (real / "module.py").write_text("x = 1")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    steps = plan_exposures([str(tmp_path / "alias" / "lib" / "module.py"), str(tmp_path / "real"),
                            str(tmp_path / "missing")])
    assert ("symlink", str(tmp_path / "real"), str(tmp_path / "alias")) in steps
    assert ("bind", str(tmp_path / "real"), str(tmp_path / "real")) in steps
    assert len([s for s in steps if s[0] == "bind"]) == 1  # the file is covered by its directory


def test_a_memory_limit_below_the_warm_interpreter_is_a_configuration_error():
    from spo_agents.sandbox import SandboxPool

    with pytest.raises(ValueError, match="memory_mb=128 leaves no room"):
        SandboxPool(SandboxConfig(num_helpers=1, memory_mb=128))
