"""Bad command lines: one line on stderr, exit code 2, no traceback, and nothing on disk touched.

Each case runs `spo_agents.cli.main(argv)` in-process from a scratch folder that already holds an
old run (`oldrun/config.yaml`), a checkpoint outside any run, a YAML file with a syntax error and
so on; the whole folder is fingerprinted (paths, sizes, contents) before and after, so a command
that created a run folder or rewrote `oldrun/config.yaml` before failing is caught. One case runs
`python -m spo_agents` in a subprocess to check the real process exit code and stderr.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spo_agents.cli import main
from spo_agents.cli.errors import UserError

NO_WARM = ["--set", "model=tiny", "--set", "warm_start=null"]

CASES = [
    # train: config files and overrides
    (["train", "--config", "nosuch.yaml"], "no config file 'nosuch.yaml'"),
    (["train", "--config", "broken.yaml"], "broken.yaml: invalid YAML at line"),
    (["train", "--config", "list.yaml"], "must hold a mapping"),
    (["train", "--set", "steps=0"], "steps: Input should be greater than or equal to 1 (got 0)"),
    (["train", "--set", "nosuch=1"], "nosuch: unknown field"),
    (["train", "--set", "steps"], "must look like key.sub=value"),
    (["train", "--set", "steps=[1, 2"], "not valid YAML"),
    (["train", "--set", "rollout=5"], "rollout: Input should be a valid dictionary"),
    (["train", "--set", "steps.x=1"], "steps holds a value"),
    (["train", "--set", "algo=ppo"], "algo: Input should be 'spo' or 'grpo'"),
    (["train", "--algo", "grpo", "--set", "batch_size=10"], "invalid config: batch_size (10) must be a multiple of group_size"),
    (["train", "--set", "optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    (["train", "--set", "generation=openai", *NO_WARM], "invalid config: generation: openai needs exactly one generation_url"),
    (["train", "--nosuch"], "unrecognized arguments: --nosuch"),
    # train: what the config names, checked before the run folder is touched
    (["train", "--set", "env_id=spo/Nope-v0", "--output-dir", "out"], "'spo/Nope-v0' is not registered"),
    (["train", "--set", "env_kwargs.nosuch=1", "--output-dir", "out"], "cannot be made with"),
    (["train", "--set", "eval.split=nosplit", *NO_WARM, "--output-dir", "out"], "evaluation needs the split 'nosplit'"),
    (["train", "--set", "model=/no/such/folder", "--set", "warm_start=null", "--output-dir", "out"],
     "no such model folder or checkpoint: '/no/such/folder'"),
    (["train", "--set", "model=nosuch-org/nosuch-model", "--set", "warm_start=null", "--output-dir", "out"],
     "no Hugging Face model of that name in the local cache"),
    (["train", "--set", "model=missing.gguf", "--set", "warm_start=null", "--output-dir", "out"], "no such GGUF model file"),
    (["train", "--set", "warm_start.model=/no/such", "--output-dir", "out"], "warm_start.model"),
    (["train", "--set", "device=nosuchdevice", *NO_WARM, "--output-dir", "out"], "unknown torch device"),
    (["train", "--set", "value_table=missing.jsonl", *NO_WARM, "--output-dir", "out"], "no such value table"),
    # train: run folders
    (["train", "--resume", "--output-dir", "nosuchrun"], "--resume: no run folder at nosuchrun"),
    (["train", "--resume", "--output-dir", "oldrun"], "holds no checkpoint"),
    (["train", "--output-dir", "oldrun", "--set", "env_id=spo/Nope-v0"], "output folder oldrun is not empty"),
    (["train", "--output-dir", "oldrun", *NO_WARM], "pass --resume"),
    (["train", "--output-dir", "afile.txt", *NO_WARM], "output folder afile.txt is a file"),
    # eval
    (["eval", "--tasks", "-3"], "argument --tasks: '-3' is not a whole number >= 1"),
    (["eval", "--tasks", "0"], "argument --tasks"),
    (["eval", "-k", "0"], "argument -k"),
    (["eval", "-k", "64"], "at most 32"),
    (["eval", "--temperature", "-1"], "argument --temperature"),
    (["eval", "--top-p", "0"], "argument --top-p: '0' is not a number in (0, 1]"),
    (["eval", "--slots", "0"], "argument --slots"),
    (["eval", "--model", "runs/x/checkpoints/step-000010"], "no such model folder or checkpoint"),
    (["eval", "--model", "/no/such/model"], "no such model folder or checkpoint: '/no/such/model'"),
    (["eval", "--model", "orphan-ckpt"], "not inside a run folder"),
    (["eval", "--model", "afile.txt"], "is a file"),
    (["eval", "--env", "spo/Nope-v0"], "is not registered"),
    (["eval", "--env-arg", "difficulty"], "must look like key.sub=value"),
    (["eval", "--env-arg", "nosuch=1"], "cannot be made with"),
    (["eval", "--split", "nosplit"], "no task split 'nosplit'"),
    (["eval", "--json-out", "/no/such/dir/out.json"], "no folder /no/such/dir"),
    # sft
    (["sft", "--config", "nosuch.yaml"], "no such config file: nosuch.yaml"),
    (["sft", "--config", "broken.yaml"], "broken.yaml: invalid YAML at line"),
    (["sft", "--steps", "0"], "argument --steps"),
    (["sft", "--set", "nosuch=1"], "nosuch: unknown field"),
    (["sft", "--set", "steps"], "must look like key.sub=value"),
    (["sft", "--env", "spo/Nope-v0"], "is not registered"),
    (["sft", "--model", "/no/such"], "no such model folder or checkpoint"),
    # estimate-values
    (["estimate-values"], "the following arguments are required: --out"),
    (["estimate-values", "--out", "/no/such/dir/v.jsonl"], "no folder /no/such/dir"),
    (["estimate-values", "--out", "v.jsonl", "--n0", "0"], "argument --n0"),
    (["estimate-values", "--out", "v.jsonl", "--set", "env_id=spo/Nope-v0"], "is not registered"),
    # envs and demo
    (["envs", "show", "spo/Nope-v0"], "is not registered"),
    (["envs", "show", "spo/Calculator-v0", "--task-id", "nosuch"], "has no task 'nosuch'"),
    (["envs", "show", "spo/Calculator-v0", "--stats", "--samples", "0"], "argument --samples"),
    (["envs", "show", "spo/Calculator-v0", "--stats", "--split", "nosplit"], "no task split 'nosplit'"),
    (["demo", "--episodes", "-1"], "argument --episodes"),
    # serve
    (["serve", "--model", "/no/such/model"], "no such model folder or checkpoint"),
    (["serve", "--model", "tiny", "--port", "99999"], "argument --port"),
    (["serve", "--model", "tiny", "--host", "0.0.0.0"], "exposes the server beyond this machine"),
    (["serve", "--model", "tiny", "--max-batch-size", "0"], "argument --max-batch-size"),
    (["serve", "--model", "tiny", "--max-body-mb", "0"], "argument --max-body-mb"),
    (["serve", "--model", "tiny", "--weights-dir", "oldrun"], "needs an API key"),
    (["serve", "--model", "tiny", "--api-key-file", "nosuch.key"], "cannot read it"),
    (["serve", "--model", "tiny", "--api-key-file", "empty.key"], "is empty"),
    # benchmarks
    (["bench", "generation", "--model", "/no/such/model"], "--model: no such model folder or checkpoint"),
    (["bench", "generation", "--model", "tiny", "--requests", "0"], "argument --requests"),
    (["bench", "envs", "--grades", "-1"], "argument --grades"),
    (["bench", "sandbox", "--helpers", "1,x"], "argument --helpers"),
    (["bench", "sandbox", "--calls", "0"], "argument --calls"),
    # the top level
    ([], "the following arguments are required: COMMAND"),
    (["nosuch"], "invalid choice: 'nosuch'"),
]


def _scratch(folder: Path) -> None:
    (folder / "broken.yaml").write_text("steps: 3\nrollout: [1, 2\n")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "afile.txt").write_text("not a folder")
    (folder / "empty.key").write_text("\n")
    (folder / "oldrun").mkdir()
    (folder / "oldrun" / "config.yaml").write_text("# the config of an earlier run\nsteps: 7\n")
    (folder / "oldrun" / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "orphan-ckpt").mkdir()
    (folder / "orphan-ckpt" / "model.safetensors").write_bytes(b"not read")


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    _scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPO_AGENTS_API_KEY", raising=False)
    monkeypatch.delenv("SPO_AGENTS_DEBUG", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return tmp_path


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


def test_there_are_at_least_35_bad_invocations():
    assert len(CASES) >= 35 and len({tuple(argv) for argv, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(argv) or "(nothing)" for argv, _ in CASES])
def test_a_bad_invocation_is_one_line_and_exit_code_2(scratch, capsys, argv, expected):
    before = _fingerprint(scratch)
    code = run_main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("spo-agents") and ": error: " in lines[0], err
    assert expected in lines[0], err
    assert out == ""
    assert _fingerprint(scratch) == before  # no run folder created, oldrun/config.yaml untouched


def test_debug_shows_the_traceback_of_a_user_error(scratch, monkeypatch):
    with pytest.raises(UserError, match="no such model folder"):
        main(["--debug", "eval", "--model", "/no/such/model"])
    monkeypatch.setenv("SPO_AGENTS_DEBUG", "1")
    with pytest.raises(UserError, match="no such model folder"):
        main(["eval", "--model", "/no/such/model"])


def test_a_bug_keeps_its_traceback(scratch, monkeypatch):
    from spo_agents.cli import train_cmd

    def broken(_args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(train_cmd, "check_output_dir", lambda *a, **k: broken(None))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--set", "steps=2"])


def test_the_real_process_exits_2_with_one_line(scratch):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "envs"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "spo_agents", "train", "--output-dir", "oldrun", "--set", "steps=0"],
                          cwd=scratch, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "spo-agents train: error: invalid config: steps: Input should be greater than or " \
                                  "equal to 1 (got 0)"
    assert (scratch / "oldrun" / "config.yaml").read_text().startswith("# the config of an earlier run")


def test_the_generation_api_key_is_never_printed(scratch, capsys, monkeypatch):
    monkeypatch.setenv("SPO_AGENTS_API_KEY", "env-secret")
    assert main(["train", "--print-config", "--set", "generation_api_key=config-secret"]) == 0
    out = capsys.readouterr().out
    assert "config-secret" not in out and "env-secret" not in out and "generation_api_key" not in out
