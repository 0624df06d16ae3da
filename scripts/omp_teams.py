"""Why the trainer keeps one OpenMP team per process on a CPU: time a learner step three ways.

    python scripts/omp_teams.py            # 4 timed steps per arrangement, each in a fresh process

Arrangements (the same PolicyUpdater step on 64 episodes of 39 prompt + 55-64 completion tokens,
the `bench learner` model shape, fp32, every core):
- `main`: the step runs in the main thread, the only thread with an OpenMP team.
- `second-team`: the main thread has run a parallel op first (as loading a model does), then
  the step runs in another thread: two teams, more OpenMP threads than cores, and libgomp
  throttles its idle workers' spinning for every team.
- `set-up-thread-ended`: the parallel op runs in a thread that ends (`in_own_thread`), then the
  step runs in another thread: its team is again the only one.
Prints seconds per step (median) and context switches per step for each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def context_switches() -> int:
    total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def learner_steps(steps: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from spo_agents.bench.learner_setup import MODEL_SHAPE
    from spo_agents.learner.update import OptimConfig, PolicyUpdater
    from spo_agents.rollout.episode import TrainingSample

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=1030, tie_word_embeddings=True, **MODEL_SHAPE))
    samples = []
    for i in range(64):
        prompt, completion = 39, 55 + (i * 7) % 10
        ids = torch.randint(0, 1030, (prompt + completion,)).tolist()
        samples.append(TrainingSample(ids, [0] * prompt + [1] * completion, [0.0] * prompt + [-6.9] * completion))
    advantages = [((i % 3) - 1) * 0.5 for i in range(64)]
    updater = PolicyUpdater(model, OptimConfig(lr=1e-5))
    updater.step(samples, advantages)  # warm-up
    seconds, switches = [], context_switches()
    for _ in range(steps):
        started = time.perf_counter()
        updater.step(samples, advantages)
        seconds.append(time.perf_counter() - started)
    return {"s_per_step": statistics.median(seconds), "switches_per_step": (context_switches() - switches) / steps}


def run_arrangement(name: str, steps: int) -> dict:
    import concurrent.futures

    import torch

    from spo_agents.backends.omp import in_own_thread

    def parallel_op() -> None:
        torch.randn(1024, 1024) @ torch.randn(1024, 1024)

    if name == "main":
        return learner_steps(steps)
    if name == "second-team":
        parallel_op()
    elif name == "set-up-thread-ended":
        in_own_thread(parallel_op)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(learner_steps, steps).result()


def main() -> None:
    if len(sys.argv) == 3:  # a worker: one arrangement, its JSON on stdout
        print(json.dumps(run_arrangement(sys.argv[1], int(sys.argv[2]))))
        return
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    for name in ("main", "second-team", "set-up-thread-ended"):
        out = subprocess.run([sys.executable, __file__, name, str(steps)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:20s} {result['s_per_step']:.3f} s/step  {result['switches_per_step']:8.0f} context switches/step")


if __name__ == "__main__":
    main()
