"""Seeded FileSearch tasks: a question about a service, and the file tree that answers it.

Why two random streams per task: the task list (prompts, answers, search budgets) is built for
thousands of tasks whenever the environment is made, so it must be cheap; the file tree (a few
hundred files) is only needed when an episode of that task starts. Task `fs-{index:05d}` draws
its plan from `default_rng([seed, index, 0])` and its tree from `default_rng([seed, index, 1])`,
and the task's metadata holds everything needed to rebuild both, so a task id always means the
same question and the same tree.

The search budget: each task draws the number of tool calls an optimal searcher needs, T,
from a discretised Pareto distribution, `floor(1.5 * (1 - U) ** (-1 / tail_index))` clipped to
`[min_calls, max_calls]`, so that P(T >= k) is about (1.5 / k) ** tail_index: most tasks take
two to four calls, a few take forty or more. The chain of files is then laid out so that
following it costs exactly T calls (see `HOP_COST`); `metadata["oracle_calls"]` records T.

What the chain looks like (the grammar the oracle follows, one pointer per file):
- entry: `/etc/services/NAME.conf` given in the question (1 call: cat), or `NAME.service`
  somewhere under /srv (2 calls: find, cat);
- `include = PATH` (1 call: cat PATH);
- `config_file = ${VAR}` where VAR is defined in an env file (2 calls: grep "VAR=", cat);
- `include_name = FILE    # the file lies somewhere under ROOT` (2 calls: find, cat);
- `profile_dir = DIR    # the profile with the highest number is the active one` (2 calls:
  ls DIR, cat the highest-numbered profile);
- the answer: `ATTRIBUTE = VALUE` (no further call) or `ATTRIBUTE = ${VAR}` (1 call: grep).
Nodes never name their service, and variable names are random, so grepping for the service
or the attribute does not skip hops; distractor services have chains of the same shape that
end in other values, and profile directories hold decoy profiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spo_agents.env import Task, split_tasks

SERVICE_PREFIXES = ["billing", "auth", "search", "ledger", "notify", "render", "ingest", "report", "gateway",
                    "cache", "media", "audit", "profile", "orders", "catalog", "metrics", "mailer", "session",
                    "scheduler", "storage"]
SERVICE_SUFFIXES = ["api", "worker", "proxy", "daemon", "svc", "indexer", "sync", "relay"]
QUESTIONS = {
    "listen_port": "Which TCP port does the service `{svc}` listen on (its `listen_port` setting)?",
    "max_connections": "How many connections does the service `{svc}` accept at most (its `max_connections` setting)?",
    "db_host": "Which database host does the service `{svc}` connect to (its `db_host` setting)?",
    "cache_ttl_s": "For how many seconds does the service `{svc}` cache responses (its `cache_ttl_s` setting)?",
}
ATTRIBUTES = sorted(QUESTIONS)
ZONES = ["eu1", "eu2", "us1", "us2", "ap1", "sa1"]

ENTRY_COST = {"path": 1, "find": 2}
HOP_COST = {"include": 1, "var_path": 2, "find": 2, "profile": 2}
HOP_KINDS = list(HOP_COST)
HOP_WEIGHTS = np.array([0.4, 0.2, 0.2, 0.2])
FINAL_COST = {"literal": 0, "var": 1}
PARETO_SCALE = 1.5
MAX_FILES = 10_000  # file names are drawn from 26,000 and must stay unique


@dataclass(frozen=True)
class FileSearchConfig:
    """Difficulty knobs (environment arguments of the same names)."""

    num_files: int = 120  # filler files besides the chains
    depth: int = 4  # most directory levels below a top-level root
    distractors: int = 10  # other services with chains of the same shape
    min_calls: int = 1  # clip of the per-task search budget (optimal tool calls)
    max_calls: int = 48
    tail_index: float = 1.0  # Pareto shape: smaller means a heavier tail

    def __post_init__(self):
        if not 1 <= self.min_calls <= self.max_calls:
            raise ValueError(f"need 1 <= min_calls <= max_calls, got {self.min_calls}, {self.max_calls}")
        if self.tail_index <= 0 or self.depth < 1 or not 0 <= self.num_files <= MAX_FILES or self.distractors < 0:
            raise ValueError(f"tail_index must be > 0, depth >= 1, num_files 0-{MAX_FILES}, distractors >= 0")
        if self.distractors > len(SERVICE_PREFIXES) * len(SERVICE_SUFFIXES) - 1:
            raise ValueError("too many distractor services")


@dataclass(frozen=True)
class ChainPlan:
    """The shape of one service's chain: how it starts, its hops and how the value is given."""

    entry: str
    hops: tuple[str, ...]
    final: str

    @property
    def calls(self) -> int:
        return ENTRY_COST[self.entry] + sum(HOP_COST[h] for h in self.hops) + FINAL_COST[self.final]


@dataclass(frozen=True)
class TaskPlan:
    service: str
    attribute: str
    value: str
    host: str
    chain: ChainPlan


def draw_calls(rng: np.random.Generator, config: FileSearchConfig) -> int:
    """The search budget T: a discretised Pareto draw clipped to [min_calls, max_calls]."""
    draw = PARETO_SCALE * (1.0 - rng.random()) ** (-1.0 / config.tail_index)
    return int(min(max(int(draw), config.min_calls), config.max_calls))


def plan_chain(rng: np.random.Generator, calls: int) -> ChainPlan:
    """A chain whose optimal search takes exactly `calls` tool calls."""
    entry = "path" if calls == 1 or rng.random() < 0.6 else "find"
    remaining, hops, final = calls - ENTRY_COST[entry], [], "literal"
    while remaining > 0:
        if remaining == 1 and rng.random() < 0.5:
            final, remaining = "var", 0
            break
        affordable = [i for i, kind in enumerate(HOP_KINDS) if HOP_COST[kind] <= remaining]
        weights = HOP_WEIGHTS[affordable] / HOP_WEIGHTS[affordable].sum()
        kind = HOP_KINDS[affordable[int(rng.choice(len(affordable), p=weights))]]
        hops.append(kind)
        remaining -= HOP_COST[kind]
    return ChainPlan(entry, tuple(hops), final)


def service_name(rng: np.random.Generator) -> str:
    prefix = SERVICE_PREFIXES[int(rng.integers(len(SERVICE_PREFIXES)))]
    return f"{prefix}-{SERVICE_SUFFIXES[int(rng.integers(len(SERVICE_SUFFIXES)))]}"


def attribute_value(rng: np.random.Generator, attribute: str) -> str:
    if attribute == "listen_port":
        return str(int(rng.integers(1024, 65536)))
    if attribute == "max_connections":
        return str(int(rng.integers(16, 4097)))
    if attribute == "db_host":
        return f"db-{int(rng.integers(1, 100)):02d}.{ZONES[int(rng.integers(len(ZONES)))]}.internal"
    return str(int(rng.integers(5, 86401)))


def plan_task(seed: int, index: int, config: FileSearchConfig) -> TaskPlan:
    rng = np.random.default_rng([seed, index, 0])
    attribute = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
    service = service_name(rng)
    value = attribute_value(rng, attribute)
    host = f"node-{int(rng.integers(16**5)):05x}"
    return TaskPlan(service, attribute, value, host, plan_chain(rng, draw_calls(rng, config)))


def entry_path(service: str, entry: str) -> str:
    """The entry file of a service (for `find` entries, its name; the tree decides the folder)."""
    return f"/etc/services/{service}.conf" if entry == "path" else f"{service}.service"


def task_prompt(plan: TaskPlan) -> str:
    question = QUESTIONS[plan.attribute].format(svc=plan.service)
    if plan.chain.entry == "path":
        start = f"Its configuration starts at {entry_path(plan.service, 'path')}"
    else:
        start = f"Its configuration starts at the file `{entry_path(plan.service, 'find')}`, somewhere under /srv,"
    return (
        f"You are looking at a read-only config snapshot of host `{plan.host}`. {question} {start} "
        "and may point to other files: follow it to the setting that applies. "
        "Give the value exactly as written in the files, in \\boxed{}."
    )


def generate_tasks(num_tasks: int = 2000, seed: int = 0, config: FileSearchConfig | None = None) -> list[Task]:
    """`num_tasks` tasks with ids `fs-{index:05d}` (an id whose prompt repeats is skipped)."""
    config = config or FileSearchConfig()
    tasks, prompts = [], set()
    for index in range(num_tasks):
        plan = plan_task(seed, index, config)
        prompt = task_prompt(plan)
        if prompt in prompts:  # an identical prompt would leak across the splits
            continue
        prompts.add(prompt)
        metadata = {
            "seed": seed,
            "index": index,
            "config": asdict(config),
            "attribute": plan.attribute,
            "oracle_calls": plan.chain.calls,
            "entry": plan.chain.entry,
            "hops": list(plan.chain.hops),
            "final": plan.chain.final,
        }
        tasks.append(Task(task_id=f"fs-{index:05d}", prompt=prompt, answer=plan.value, metadata=metadata))
    return tasks


def filesearch_splits(num_tasks: int = 2000, seed: int = 0, heldout_fraction: float = 0.2,
                      config: FileSearchConfig | None = None):
    return split_tasks(generate_tasks(num_tasks, seed, config), heldout_fraction)
