"""spo/PythonExec-v0: tasks, the unforgeable grader, reward hacking, sessions, sandbox failures."""

import copy
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium
import pytest

import spo_agents  # noqa: F401
from spo_agents.env import Task
from spo_agents.sandbox import ExecResult, SandboxConfig, SandboxError
from spo_env_pythonexec import PythonExecEnv, extract_solution, shared_pool, values_match
from spo_env_pythonexec.grading import load_failure, new_nonce, parse_report
from spo_env_pythonexec.harness import build_loader, build_test_runner
from spo_env_pythonexec.loader import load_python_tasks, normalize_tests
from spo_agents.env.sandbox_tool import discard_pool
from spo_env_pythonexec.tasks import generate_tasks

FENCE = "```"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def make(**kwargs) -> PythonExecEnv:
    return gymnasium.make("spo/PythonExec-v0", **kwargs).unwrapped


def call(code: str) -> str:
    return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"


def reply(code: str) -> str:
    return f"My solution:\n{FENCE}python\n{code}\n{FENCE}"


def sum_task(**extra) -> Task:
    """A task with distinctive expected values (to look for them inside the sandbox)."""
    tests = [{"expr": f"add({a}, {b})", "expected": repr(a + b)} for a, b in [(1000003, 7), (424242, 1), (5, 6)]]
    return Task(task_id="add", prompt="Write add(a, b).", answer="def add(a, b):\n    return a + b\n",
                metadata={"entry_point": "add", "tests": tests, "setup": "", **extra})


# ----- the task set -------------------------------------------------------------------------
def test_task_set_is_stable_and_splits_do_not_share_functions():
    tasks = generate_tasks(400)
    assert len(tasks) == 400 and tasks == generate_tasks(400)
    assert len({t.metadata["family"] for t in tasks}) >= 20
    assert all(len(t.metadata["tests"]) == 8 for t in tasks)
    assert generate_tasks(5, seed=1)[0].prompt != tasks[0].prompt
    env = make()
    train, heldout = env.splits["train"], env.splits["heldout"]
    assert train.disjoint_from(heldout) and len(heldout) >= 50
    definition = lambda task: task.prompt.split("\n\nExample")[0]  # noqa: E731
    assert not {definition(t) for t in train} & {definition(t) for t in heldout}


def test_descriptions_agree_with_independent_implementations():
    checked = 0
    for task in generate_tasks(400):
        family, prompt = task.metadata["family"], task.prompt
        namespace = {}
        exec(task.answer, namespace)
        function = namespace[task.metadata["entry_point"]]
        if family == "polygonal":
            first = [int(x) for x in re.search(r"starts ([\d, ]+) for", prompt).group(1).split(", ")]
            assert [function(n) for n in range(0, 5)] == [0, *first]
            k = first[1]
            assert all(function(n) == n * ((k - 2) * n - (k - 4)) // 2 for n in range(50))
        elif family == "sum_of_multiples":
            a, b = map(int, re.search(r"multiples of (\d+) or (\d+)", prompt).groups())
            tri = lambda m, n: m * ((n - 1) // m) * ((n - 1) // m + 1) // 2  # noqa: E731
            assert all(function(n) == tri(a, n) + tri(b, n) - tri(a * b // __import__("math").gcd(a, b), n)
                       for n in range(1, 300))
        elif family == "shift_letters":
            assert function("") == "" and function("A, !") == "A, !"
            k = int(re.search(r"moved (\d+) places", prompt).group(1))
            sign = 1 if "forward" in prompt else -1
            assert function("a") == chr((sign * k) % 26 + 97)
        else:
            continue
        checked += 1
    assert checked >= 30


def test_every_reference_solution_passes_its_hidden_tests_in_the_sandbox():
    env = make()
    tasks = generate_tasks(400)
    with ThreadPoolExecutor(2) as executor:
        reports = list(executor.map(lambda t: env.run_tests(t.answer, t), tasks))
    failed = [(t.task_id, r) for t, r in zip(tasks, reports) if r.reward("all") != 1.0]
    assert failed == []
    # and the tests can fail: a reference broken by one character loses
    task = tasks[0]
    broken = task.answer.replace("return ", "return 1 + ", 1)
    assert env.run_tests(broken, task).reward("all") == 0.0


def test_oracle_episode_tries_the_example_then_scores():
    env = make()
    for seed in range(3):
        env.reset(seed=seed)
        observation, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert observation == env.task.metadata["example"].split(" == ", 1)[1]
        assert (reward, terminated, truncated) == (0.0, False, False)
        observation, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert (observation, reward, terminated, truncated) == ("", 1.0, True, False)
        assert info["tests_passed"] == info["tests_total"] == 8


# ----- extraction and comparison ------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (f"{FENCE}python\nA\n{FENCE} then {FENCE}python\nB\n{FENCE}", "B\n"),
    (f"{FENCE}py\nA\n{FENCE}\n{FENCE}text\nout\n{FENCE}", "A\n"),  # a later non-python block is skipped
    (f"{FENCE}python\nA\n{FENCE} and {FENCE}python\nunclosed", "A\n"),
    (f"{FENCE}\nno language\n{FENCE}", None),
    ("no code at all", None),
    (call(f"{FENCE}python\nX\n{FENCE}") + " done", None),  # code inside a tool call does not count
    (f"{FENCE}Python3\nC\n{FENCE}", "C\n"),
])
def test_extract_solution(text, expected):
    assert extract_solution(text) == expected


@pytest.mark.parametrize("expected, got, same", [
    (3, 3, True), (3, 3.0, False), (3.0, 3, True), (0.1 + 0.2, 0.3, True), (3, 4, False), (True, 1, False),
    (1, True, False), (10**20, float(10**20 + 1), False), (10**20, float(10**20), False), ([7], [7.0], False),
    ([1, 2], (1, 2), True), ([1, 2], [1, 2, 3], False), ({"a": [1]}, {"a": (1,)}, True), ({"a": 1}, {"b": 1}, False),
    ({1, 2}, frozenset({1, 2}), True), ("1", 1, False), (None, None, True), (None, 0, False), ([[1]], [[2]], False),
])
def test_values_match(expected, got, same):
    assert values_match(expected, got) is same


def test_report_parsing_rejects_duplicates_and_out_of_order_lines():
    nonce = new_nonce()
    good = f"noise\n{nonce} 0 ok 1\n{nonce} 1 ok 2\n{nonce} done\n"
    assert parse_report(good, nonce, [1, 2]).passed == 2
    duplicated = f"{nonce} 0 ok 1\n{nonce} 0 ok 1\n{nonce} 1 ok 2\n{nonce} done\n"
    assert parse_report(duplicated, nonce, [1, 2]).passed == 0
    assert parse_report(f"{nonce} 1 ok 2\n{nonce} 0 ok 1\n", nonce, [1, 2]).passed == 0
    assert parse_report(f"{nonce} 0 ok 1\n", nonce, [1, 2]).error.startswith("the tests stopped after 1")
    assert parse_report("other-nonce 0 ok 1\n", nonce, [1]).passed == 0
    assert parse_report(f"{nonce} 0 ok __import__('os')\n{nonce} done\n", nonce, [0]).passed == 0
    assert parse_report(f"{nonce} 0 ok 1", nonce, [1]).passed == 0  # cut at the output cap: 12 -> 1


# ----- reward hacking -----------------------------------------------------------------------
HONEST = "def add(a, b):\n    return a + b\n"
HACKS = {
    "exit before the tests": "import os\nos._exit(0)\n",
    "exit inside the function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys.exit with success": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "print fake success": "print('All tests passed!')\nprint('OK')\ndef add(a, b):\n    print('PASS')\n    return 0\n",
    "raw write of fake report lines": (
        "import os\nfor i in range(3):\n    os.write(1, f'spo-grade-{\"0\" * 32} {i} ok 0\\n'.encode())\n"
        "os.write(1, b'done\\n')\nos._exit(0)\n"),
    "forge with the stolen nonce": (
        "import os, sys\nframe = sys._getframe(1)\nnonce = frame.f_locals['nonce']\n"
        "for i, expr in enumerate(frame.f_locals['tests']):\n    os.write(1, f'{nonce} {i} ok 1\\n'.encode())\n"
        "os.write(1, f'{nonce} done\\n'.encode())\nos._exit(0)\n"),
    "always-equal object": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n"
        "        return '-1'\ndef add(a, b):\n    return Anything()\n"),
    "int subclass with a fake repr": (
        "class Fake(int):\n    def __repr__(self):\n        return '-1'\ndef add(a, b):\n    return Fake(0)\n"),
    "patch builtins": (
        "import builtins\nbuiltins.repr = lambda value: '-1'\nbuiltins.AssertionError = Exception\n"
        "builtins.eval = lambda *a, **k: -1\ndef add(a, b):\n    return 0\n"),
    "patch the comparison helpers": (
        "import operator, math\noperator.eq = lambda a, b: True\nmath.isclose = lambda *a, **k: True\n"
        "def add(a, b):\n    return None\n"),
    "read the tests from frames and files": (
        "import gc, os, sys\nfound = []\nfor path in ('/sandbox', '/tmp', '.'):\n"
        "    found += os.listdir(path) if os.path.isdir(path) else []\n"
        "def add(a, b):\n    frame = sys._getframe(1)\n"
        "    consts = [c for c in frame.f_code.co_consts if isinstance(c, int) and c not in (a, b)]\n"
        "    return consts[-1] if consts else -1\n"),
    "infinite loop on import": "while True:\n    pass\n",
    "infinite loop that ignores the per-test timer": (
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ndef add(a, b):\n    while True:\n"
        "        try:\n            pass\n        except BaseException:\n            pass\n"),
    "raise SystemExit in the function": "def add(a, b):\n    raise SystemExit(0)\n",
    "a float one off a large int (issue 16 item 8)": "def add(a, b):\n    return float(a + b + 1)\n",
    "swallow the timer and return garbage": (
        "def add(a, b):\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        return 0\n"),
}


@pytest.mark.parametrize("name", sorted(HACKS))
@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_reward_hacking_attempts_score_zero(name, mode):
    env = make(reward=mode, grade_timeout_s=2.0, test_timeout_s=0.3)
    task = sum_task()
    started = time.monotonic()
    assert env.run_tests(HACKS[name], task).reward(mode) == 0.0
    assert time.monotonic() - started < 2.0 + 2.0
    assert env.run_tests(HONEST, task).reward(mode) == 1.0  # the pool keeps serving


# Runs as the solution: everything it can reach (GC-tracked objects, its whole stack, scratch
# files, its parent's memory and descriptors) at load time and at each call, searched for the
# expected values and for the other tests' inputs. Its answer is the report (a plain str).
SPY = r'''
import gc, os, sys
def reachable():
    gc.collect()  # what this spy's own earlier searches left in reference cycles
    seen = [repr(o) for o in gc.get_objects()]
    frame = sys._getframe()
    while frame:
        seen.append(repr(frame.f_locals) + repr(frame.f_code.co_consts))
        frame = frame.f_back
    for root in ("/sandbox", "/tmp", "/dev/shm"):
        for d, _, files in os.walk(root):
            seen += [open(os.path.join(d, f), errors="replace").read() for f in files]
    return "\\n".join(seen)
def parent():
    found = []
    for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd"):
        try:
            os.listdir(path) if path.endswith("fd") else open(path, "rb").close()  # open checks access
            found.append(path)
        except OSError:
            pass
    return found
def flags(current):
    blob = reachable()  # first: the targets below must not be in the snapshot
    base = int("1000000")
    inputs, expected = [str(base + 3), str(base - 575758)], [str(base + 10), str(base - 575757)]
    return any(i in blob for i in inputs if i != current), any(e in blob for e in expected)
LOAD = flags(None)
def add(a, b):
    later, expected = flags(str(a))
    return f"SPY load={LOAD} later={later} expected={expected} parent={parent()}"
'''


def test_the_solution_sees_no_expected_value_no_other_test_and_not_its_harness():
    pool = shared_pool(make().sandbox_config)
    task = sum_task()
    load_nonce, test_nonce = new_nonce(), new_nonce()
    with pool.session() as session:
        loaded = session.run(build_loader(SPY, "", load_nonce, 5.0), timeout_s=30)
        assert load_failure(loaded.stdout, load_nonce) is None, loaded
        result = session.run(build_test_runner([t["expr"] for t in task.metadata["tests"]][:1], test_nonce, 30.0),
                             timeout_s=60)
    assert f"{test_nonce} 0 ok 'SPY load=(False, False) later=False expected=False parent=[]'" in result.stdout, result


# ----- the generator hack with a normal (non-editable) install (issue 16 item 7) -------------
# What the audit submitted: read the tests from the harness's frames (or take the arguments it
# is called with), import the task generator from site-packages, regenerate the task list,
# find the task whose tests match, and run its reference solution.
GENERATOR_HACK = r'''
import sys
_TASKS = []
def _reference(entry, call):
    tests = None
    frame = sys._getframe(1)
    while frame and tests is None:
        tests = frame.f_locals.get("tests")
        frame = frame.f_back
    _TASKS[:] = _TASKS or _stolen_tasks()
    for task in _TASKS:
        exprs = [t["expr"] for t in task.metadata["tests"]]
        if task.metadata["entry_point"] == entry and (tests == exprs or call in exprs):
            namespace = {}
            exec(task.answer, namespace)
            return namespace[entry]
    raise LookupError("task not found")

def _stolen_tasks():
    import importlib.util, os
    path = next(os.path.join(d, "spo_env_pythonexec", "tasks.py") for d in sys.path
                if os.path.exists(os.path.join(d, "spo_env_pythonexec", "tasks.py")))
    spec = importlib.util.spec_from_file_location("stolen_tasks", path)  # not through the package's __init__
    stolen = importlib.util.module_from_spec(spec)
    sys.modules["stolen_tasks"] = stolen
    spec.loader.exec_module(stolen)
    return stolen.generate_tasks(400)

def ENTRY(*args):
    call = "ENTRY(" + ", ".join(repr(a) for a in args) + ")"
    return _reference("ENTRY", call)(*args)
'''


# Runs in a fresh interpreter whose only copy of the project is the installed one.
INSTALLED_RUN = r'''
import json, sys
site, sandbox, hack = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
import gymnasium, spo_agents
from spo_env_pythonexec.tasks import generate_tasks
assert spo_agents.__file__.startswith(site), spo_agents.__file__
env = gymnasium.make("spo/PythonExec-v0", sandbox=sandbox, grade_timeout_s=20.0).unwrapped
out = {"import": env.python("import spo_env_pythonexec.tasks as t; print(t.__file__)"),
       "agents": env.python("from spo_agents.env import Task; print('imported')"), "hack": [], "hack_fraction": [],
       "honest": []}
for task in generate_tasks(400)[:4]:
    entry = task.metadata["entry_point"]
    report = env.run_tests(hack.replace("ENTRY", entry), task)
    out["hack"].append(report.reward("all"))
    out["hack_fraction"].append(report.reward("fraction"))
    out["honest"].append(env.run_tests(task.answer, task).reward("all"))
toolmath = gymnasium.make("spo/ToolMath-v0", sandbox=sandbox).unwrapped  # its answers come from its generator too
out["toolmath"] = toolmath.python("from spo_env_toolmath.problems import bundled_problems\n"
                                  "print(len(bundled_problems()))")
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def installed_site():
    """A site-packages holding copies of the project's packages, as `pip install .` (not -e)
    leaves them; it must lie outside the directories the sandbox masks (/tmp ...)."""
    home = Path.home()
    if any(str(home.resolve()).startswith(d) for d in ("/tmp", "/var/tmp", "/dev/shm")):
        pytest.skip("the home directory is under a directory the sandbox masks")
    if any(str(Path(sys.prefix).resolve()).startswith(d) for d in ("/tmp", "/var/tmp", "/dev/shm")):
        pytest.skip("the virtual environment (gymnasium, numpy) is under a directory the sandbox masks")
    root = Path(tempfile.mkdtemp(prefix="spo-site-", dir=home))
    site = root / "lib" / "site-packages"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT_ROOT / "spo_agents", site / "spo_agents", ignore=ignore)
    for package in (PROJECT_ROOT / "envs").glob("spo_env_*"):
        shutil.copytree(package, site / package.name, ignore=ignore)
    (site / "spo_agents-0.1.0.dist-info").mkdir()
    (site / "spo_agents-0.1.0.dist-info" / "RECORD").write_text("spo_agents/__init__.py,,\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield site
    shutil.rmtree(root)


def run_installed(site: Path, **sandbox) -> dict:
    sandbox = {"uid_base": SandboxConfig().uid_base + 70_000, "num_helpers": 1, **sandbox}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(site),
           "HOME": os.environ.get("HOME", "/root")}
    completed = subprocess.run([sys.executable, "-c", INSTALLED_RUN, str(site), json.dumps(sandbox),
                                GENERATOR_HACK], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_generator_hack_with_a_normal_install_scores_zero(installed_site):
    out = run_installed(installed_site)
    assert "No module named 'spo_env_pythonexec' (hidden inside the sandbox)" in out["import"], out
    assert "ModuleNotFoundError" in out["agents"] and "ModuleNotFoundError" in out["toolmath"], out
    assert out["hack_fraction"] == [0.0] * 4 and out["honest"] == [1.0] * 4, out  # the hack scored 1.0 before


def test_generator_hack_fails_even_where_the_generator_is_importable(installed_site):
    """With the packages exposed on purpose, the hack still finds neither the tests in a frame
    nor a regenerated task whose hidden inputs match (they come from a secret test_seed). Only
    the fixed edge cases (f(0), f('')) match some task of the same family, whose reference may
    agree there: partial credit in fraction mode, never all the tests."""
    out = run_installed(installed_site, hidden_packages=[])
    assert out["import"].startswith(str(installed_site)) and out["agents"] == "imported", out  # the layout is real
    assert out["toolmath"] == "400", out
    assert out["hack"] == [0.0] * 4 and out["honest"] == [1.0] * 4, out
    # how many fixed edge cases a regenerated reference happens to agree on varies with the secret
    # test seed (observed up to 3 of 8 tests); the property is that it never passes them all
    assert max(out["hack_fraction"]) < 1.0, out


def test_hidden_test_inputs_follow_a_secret_test_seed_and_tasks_do_not():
    default, other, again = generate_tasks(50), generate_tasks(50, test_seed=7), generate_tasks(50, test_seed=7)
    assert [t.prompt for t in default] == [t.prompt for t in other] and other == again
    assert all(a.metadata["tests"] != b.metadata["tests"] for a, b in zip(default, other))
    assert make(test_seed=7).splits["train"].get(other[0].task_id).metadata["tests"] == other[0].metadata["tests"] \
        or other[0].task_id in make(test_seed=7).splits["heldout"]
    with pytest.raises(ValueError, match="test_seed"):
        make(dataset_path="tasks.jsonl", test_seed=1)


def test_fraction_reward_counts_passed_tests():
    task = sum_task()
    partial = "def add(a, b):\n    return a + b if a < 1000 else 0\n"
    assert make(reward="fraction").run_tests(partial, task).reward("fraction") == pytest.approx(1 / 3)
    assert make(reward="all").run_tests(partial, task).reward("all") == 0.0
    with pytest.raises(ValueError, match="reward"):
        make(reward="most")


def test_final_reply_without_code_scores_zero_with_a_reason():
    env = make()
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step("I think the answer is \\boxed{42}.")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["tests_passed"] == 0 and "no ```python" in info["grade_error"]


def test_solution_printing_and_main_block_do_not_disturb_grading():
    task = sum_task()
    chatty = "print('debug' * 1000)\ndef add(a, b):\n    print(a, b)\n    return a + b\nif __name__ == '__main__':\n" \
             "    input()\n"
    assert make().run_tests(chatty, task).reward("all") == 1.0


# ----- the python tool, sessions, the shared pool ------------------------------------------
def test_python_tool_is_stateless_by_default_and_output_is_truncated():
    env = make(max_tool_output_chars=300)
    env.reset(seed=0)
    assert env.step(call("x = 41"))[0] == "[no output]"
    assert "NameError" in env.step(call("print(x + 1)"))[0]
    observation = env.step(call("print('head'); print('y' * 5000); print('tail')"))[0]
    assert len(observation) <= 300 and observation.startswith("head") and observation.endswith("tail")
    assert "timed out" in make(sandbox={"timeout_s": 0.5}).python("while True: pass")


def test_stateful_mode_keeps_variables_within_an_episode_only():
    env = make(stateful=True)
    env.reset(seed=0)
    env.step(call("x = 41"))
    assert env.step(call("print(x + 1)"))[0] == "42"
    runner = env._session.runner_pid
    env.reset(seed=1)  # the episode's interpreter is killed
    assert runner is not None and not _alive(runner)
    assert "NameError" in env.step(call("print(x)"))[0]
    env.close()
    assert env._session is None


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_a_stateful_env_copies_mid_episode_without_its_session(copier):
    """Issue 16 item 15: the copy leaves the session (process-bound) behind, opens its own at
    the next call and says the interpreter was restarted; the original keeps its variables."""
    env = make(stateful=True)
    env.reset(seed=3)
    env.step(call("x = 41"))
    twin = pickle.loads(pickle.dumps(env)) if copier == "pickle" else copy.deepcopy(env)
    assert twin._session is None and twin.task == env.task and twin.turn == env.turn
    observation = twin.step(call("print('x' in globals())"))[0]
    assert observation.startswith("False") and "[the session was restarted" in observation, observation
    assert twin.step(call("y = 1\nprint('y' in globals())"))[0] == "True"  # then the new session persists
    assert env.step(call("print(x + 1)"))[0] == "42"
    assert twin._session.runner_pid != env._session.runner_pid
    _, reward, terminated, _, _ = twin.step(reply(twin.task.answer))
    assert (reward, terminated) == (1.0, True)
    twin.close()
    env.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except OSError:
        return False


def test_envs_share_one_pool_per_configuration():
    first, second = make(), make()
    first.reset(seed=0)
    second.reset(seed=0)
    first.step(call("print(1)"))
    pids = shared_pool(first.sandbox_config).helper_pids()
    second.step(call("print(2)"))
    stateful = make(stateful=True)
    stateful.reset(seed=0)
    stateful.step(call("print(3)"))
    assert first.sandbox_pool() is second.sandbox_pool() is stateful.sandbox_pool()
    assert shared_pool(first.sandbox_config).helper_pids() == pids
    assert make(sandbox={"timeout_s": 2.5}).sandbox_pool() is not first.sandbox_pool()


# ----- sandbox failures end episodes cleanly ------------------------------------------------
class BrokenPool:
    def run(self, code, timeout_s=None, stdin=None):
        return ExecResult.sandbox_failure("the sandbox helper crashed during the call and was replaced")

    def session(self):
        raise SandboxError("too many open sessions (max_sessions=1)")


@pytest.mark.parametrize("stateful", [False, True])
def test_sandbox_failure_truncates_the_episode_and_the_next_one_runs(stateful, monkeypatch):
    env = make(stateful=stateful)
    env.reset(seed=0)
    monkeypatch.setattr(env, "sandbox_pool", lambda: BrokenPool())
    observation, reward, terminated, truncated, info = env.step(call("print(1)"))
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert "sandbox error" in observation and info["sandbox_error"]
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(reply(env.task.answer))
    assert (reward, terminated, truncated) == (0.0, False, True) and "sandbox_error" in info
    monkeypatch.undo()
    env.reset(seed=0)
    assert env.step(reply(env.task.answer))[1:4] == (1.0, True, False)


def test_a_closed_shared_pool_is_replaced():
    env = make(sandbox={"timeout_s": 4.0})
    env.reset(seed=0)
    pool = env.sandbox_pool()
    pool.close()
    _, reward, terminated, truncated, info = env.step(call("print(1)"))
    assert truncated and "closed" in info["sandbox_error"]
    env.reset(seed=0)
    assert env.sandbox_pool() is not pool
    assert env.step(call("print(6 * 7)"))[0] == "42"
    discard_pool(env.sandbox_pool())


# ----- user task files ----------------------------------------------------------------------
def test_user_task_file_with_io_pairs_and_asserts(tmp_path):
    records = [
        {"task_id": "add", "prompt": "Write add(a, b).", "entry_point": "add",
         "tests": [{"input": [1, 2], "output": 3}, {"args": [-1, 1], "expected": 0}],
         "reference": "def add(a, b):\n    return a + b\n"},
        {"task_id": "sq", "prompt": "Write sq(xs) squaring each element.",
         "tests": ["import math\nassert sq([1, 2]) == [1, 4]", "assert [9] == sq([3])",
                   "assert math.prod(sq([2, 3])) == 36"]},
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    tasks = {t.task_id: t for t in load_python_tasks(path)}
    assert tasks["add"].metadata["tests"][0] == {"expr": "add(1, 2)", "expected": "3"}
    assert tasks["sq"].metadata["setup"] == "import math"
    assert [t["expr"] for t in tasks["sq"].metadata["tests"]] == ["sq([1, 2])", "sq([3])", "math.prod(sq([2, 3]))"]
    env = make(dataset_path=str(path), heldout_fraction=0.0)
    env.reset(options={"task_id": "sq"})
    assert env.step(reply("def sq(xs):\n    return [x * x for x in xs]"))[1] == 1.0
    env.reset(options={"task_id": "add"})
    assert env.step(env.oracle_action())[1:3] == (1.0, True)  # no example: it submits at once


@pytest.mark.parametrize("tests, message", [
    (["assert f(1)"], "unsupported test"),
    (["assert math.isclose(f(1), 2.0)"], "unsupported test"),
    (["assert f(1) == g(2)"], "unsupported test"),
    ([{"input": [1], "output": 2}], "entry_point"),
    ([], "no tests"),
    (["assert f(1) =="], "not valid Python"),
])
def test_unsupported_tests_are_refused_at_load_time(tests, message):
    with pytest.raises(ValueError, match=message):
        normalize_tests(tests, None)


HOSTILE_SNIPPETS = [
    "import os\nwhile True:\n    os.fork()",  # fork bomb
    "x = bytearray(10 ** 10)",  # one huge allocation
    "print('x' * 10 ** 7)",  # output flood
    "import os\nos.kill(os.getppid(), 9)",  # the parent
    "import ctypes\nctypes.string_at(0)",  # segfault
    "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return f(n + 1)\nf(0)",
    "open('/tmp/f', 'wb').write(b'0' * 10 ** 9)",  # fill the disk
    "import os\nprint(sorted(os.environ))",
]


@pytest.mark.parametrize("stateful", [False, True])
def test_training_style_loop_survives_hostile_code_from_many_threads(stateful):
    def worker(seed: int) -> list[float]:
        env = make(stateful=stateful, sandbox={"timeout_s": 3.0})  # margin for a loaded machine
        rewards = []
        for episode in range(3):
            env.reset(seed=seed * 10 + episode)
            for snippet in HOSTILE_SNIPPETS[(seed + episode) % 4::2]:
                observation, reward, terminated, truncated, info = env.step(call(snippet))
                assert isinstance(observation, str) and reward == 0.0 and "sandbox_error" not in info
                assert not (terminated or truncated)
            _, reward, terminated, truncated, _ = env.step(env.oracle_action())  # past turn 0: it submits
            rewards.append(reward if terminated and not truncated else -1.0)
        env.close()
        return rewards

    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(worker, range(4)))
    assert results == [[1.0] * 3] * 4
    environment = make(sandbox={"timeout_s": 1.0}).python("import os\nprint(sorted(os.environ))")
    assert "SPO" not in environment and "HOME" in environment
