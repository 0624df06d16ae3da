#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, install, run the `gpu` tests, benchmark
# generation, train briefly on CUDA (bf16), try vLLM, and write every number to one file.
#
#   bash scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-<date>
#
# Steps (each one runs even if an earlier one failed; the summary says which failed):
#   install      scripts/bootstrap.sh (CUDA torch, since nvidia-smi is present); on a machine
#                without network an existing .venv is used as it is
#   gpu-tests    pytest -m gpu (bf16 learner step, CUDA generation, a CUDA training run, and the
#                vLLM in-process test when vLLM is importable)
#   bench        spo-agents bench generation --device cuda (smollm2-135m, 64 requests)
#   train        the default pipeline, shortened: warm start (300 steps) then 40 SPO steps, on CUDA
#   vllm         a separate venv (.venv-vllm) with vLLM; its in-process test, then a real
#                `vllm serve` driven through the client's weight-update path (gpu_vllm_check.py)
# On a machine without network whose own Python already has torch with CUDA (and the project's
# dependencies on PYTHONPATH), set PY=python3 SKIP_INSTALL=1 SKIP_VLLM=1, BENCH_MODEL=tiny where
# the SmolLM2 file is not there, GPU_TEST_PATHS=tests/gpu where optional extras are missing, and
# USE_HUB_KERNELS=0 where transformers' `kernels` package is not installed.
# Output: OUT_DIR/gpu-check.json (status, seconds and the numbers of every step) and each step's
# log. Record the figures in docs/benchmarks.md with the machine they came from.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-.venv/bin/python}
BENCH_MODEL=${BENCH_MODEL:-smollm2-135m}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PIP_DISABLE_PIP_VERSION_CHECK=1
STEPS_FILE="$OUT/steps.tsv"
: > "$STEPS_FILE"

run_step() {  # run_step NAME COMMAND...: log to OUT/NAME.log, record status and seconds
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$STEPS_FILE"
    tail -n 3 "$OUT/$name.log"
    return $status
}

if ! nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
    echo "no NVIDIA GPU here (nvidia-smi failed); nothing to check" >&2
    exit 2
fi

install() {
    if bash scripts/bootstrap.sh; then return 0; fi
    [ -x "$PY" ] && "$PY" -c "import spo_agents, torch" && echo "bootstrap failed; using the existing .venv"
}
if [ "${SKIP_INSTALL:-0}" = 1 ]; then echo "install skipped (SKIP_INSTALL=1): using $PY"; else run_step install install; fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
    > "$OUT/torch.txt" 2>&1 || { cat "$OUT/torch.txt"; echo "torch in .venv cannot use the GPU" >&2; }

# GPU_TEST_PATHS narrows collection (e.g. tests/gpu where optional extras are missing)
run_step gpu-tests "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" ${GPU_TEST_PATHS:-}
run_step bench "$PY" -m spo_agents bench generation --device cuda --model "$BENCH_MODEL" --requests 64 \
    --max-new-tokens 128 --baseline-requests 4
run_step train "$PY" -m spo_agents train --config cpu-default --set device=cuda --set warm_start.device=cuda \
    --set warm_start.steps=300 --set steps=40 --set model="$OUT/sft" --output-dir "$OUT/train-cuda" --no-progress

vllm_step() {
    local venv=.venv-vllm
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
    "$venv/bin/python" -c "import vllm" 2>/dev/null || "$venv/bin/python" -m pip install -q vllm || return 1
    "$venv/bin/python" -m pip install -q -e ".[train,serve,dev]" || return 1
    "$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
    "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider tests/backends/test_vllm_backend.py || return 1
    "$venv/bin/python" scripts/gpu_vllm_check.py "$OUT/vllm-server.json"
}
if [ "${SKIP_VLLM:-0}" = 1 ]; then echo "vllm skipped (SKIP_VLLM=1)"; else run_step vllm vllm_step; fi

"$PY" - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
def last_json(name):
    if not (out / f"{name}.log").exists():
        return None
    lines = [l for l in (out / f"{name}.log").read_text(errors="replace").splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None
def pytest_line(name):
    if not (out / f"{name}.log").exists():
        return None
    lines = [l for l in (out / f"{name}.log").read_text(errors="replace").splitlines()
             if re.search(r"\d+ (passed|failed|skipped|error)", l)]
    return lines[-1].strip("= ") if lines else None

steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    steps[name] = {"status": "ok" if status == "0" else f"failed ({status})", "seconds": int(seconds)}
report = {"machine": (out / "nvidia-smi.txt").read_text(errors="replace").splitlines()[:12],
          "torch": (out / "torch.txt").read_text(errors="replace").strip() if (out / "torch.txt").exists() else None,
          "steps": steps, "gpu_tests": pytest_line("gpu-tests"), "bench_generation": last_json("bench"),
          "train_summary": last_json("train")}
vllm_file = out / "vllm-server.json"
report["vllm"] = {"tests": pytest_line("vllm"),
                  "server": json.loads(vllm_file.read_text()) if vllm_file.exists() else None}
(out / "gpu-check.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
EOF
echo "results: $OUT/gpu-check.json"
! grep -qv $'\t0\t' "$STEPS_FILE"
