"""Lays out the file tree of a FileSearch task: the answer's chain, distractors and filler.

The chain grammar is described in tasks.py. This module turns a `TaskPlan` into concrete
files: random directories under a few top-level roots, globally unique file names (so a
`find` by name has exactly one hit), random variable names in env files, profile directories
with decoys, chains of the same shape for distractor services, and filler files that look
like configuration (some with decoy values of the asked setting, some with includes).

Everything is drawn from `default_rng([seed, index, 1])`, so `build_files(task)` returns the
same tree for the same task on every call and machine.
"""

from __future__ import annotations

import numpy as np

from spo_agents.env import Task

from spo_env_filesearch.tasks import (
    ATTRIBUTES,
    SERVICE_PREFIXES,
    SERVICE_SUFFIXES,
    ChainPlan,
    FileSearchConfig,
    attribute_value,
    entry_path,
    plan_chain,
    plan_task,
)

ROOTS = ["/etc", "/opt", "/srv", "/var/lib", "/usr/share", "/home/ops"]
DIR_WORDS = ["conf", "app", "shared", "site", "local", "legacy", "v2", "prod", "stage", "include", "fragments",
             "overrides", "templates", "net", "runtime", "defaults", "extra", "cluster", "edge", "core"]
FILE_WORDS = ["alpha", "bravo", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "iris", "juniper",
              "kestrel", "lumen", "maple", "nova", "onyx", "pine", "quartz", "raven", "sierra", "tundra", "umber",
              "vega", "willow", "xenon", "yarrow", "zephyr"]
VAR_WORDS = ["NET", "CFG", "APP", "RUNTIME", "SITE", "OPS", "CORE", "EDGE", "DATA", "SVC"]
ENV_DIRS = ["/etc/env.d", "/etc/environment.d", "/opt/env.d"]
HEADERS = ["# managed by config-sync", "# do not edit by hand", "# generated file", "# local overrides"]
NOISE_KEYS = {
    "log_level": ["debug", "info", "warn", "error"],
    "workers": [str(n) for n in (1, 2, 4, 8, 16, 32)],
    "retries": [str(n) for n in range(10)],
    "region": ["eu-west-1", "us-east-2", "ap-south-1"],
    "tls": ["on", "off"],
    "keepalive_s": ["15", "30", "60", "120"],
    "health_path": ["/healthz", "/status", "/ping"],
    "buffer_kb": ["64", "128", "256", "512"],
}
ENV_COMMENT = "# ${{NAME}} variables are defined in the files under {env_dir}"
FIND_NOTE = "    # the file lies somewhere under {root}"
PROFILE_NOTE = "    # the profile with the highest number is the active one"
MAX_DISTRACTOR_CALLS = 6


class TreeBuilder:
    """Accumulates files as lists of lines; `finish()` returns {path: text}."""

    def __init__(self, rng: np.random.Generator, config: FileSearchConfig, attribute: str, answer: str):
        self.rng, self.config, self.attribute, self.answer = rng, config, attribute, answer
        self.files: dict[str, list[str]] = {}
        self.basenames: set[str] = set()
        self.var_names: set[str] = set()
        self.profile_dirs: set[str] = set()
        self.env_dir = self.pick(ENV_DIRS)
        self.env_files = [f"{self.env_dir}/{10 * (i + 1)}-{self.pick(FILE_WORDS)}.env"
                          for i in range(int(rng.integers(4, 8)))]
        for path in self.env_files:
            self.files[path] = []
        self.dirs = [self.random_dir() for _ in range(max(6, config.num_files // 5))]

    # ----- random names -------------------------------------------------------------------
    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def random_dir(self, root: str | None = None) -> str:
        levels = int(self.rng.integers(1, self.config.depth + 1))
        return "/".join([root or self.pick(ROOTS)] + [self.pick(DIR_WORDS) for _ in range(levels)])

    def new_file(self, directory: str | None = None) -> str:
        while True:
            name = f"{self.pick(FILE_WORDS)}-{int(self.rng.integers(1000)):03d}.conf"
            if name not in self.basenames:
                self.basenames.add(name)
                return f"{directory or self.pick(self.dirs)}/{name}"

    def new_var(self) -> str:
        while True:
            name = f"{self.pick(VAR_WORDS)}_{self.pick(VAR_WORDS)}_{int(self.rng.integers(16**4)):04X}"
            if name not in self.var_names:
                self.var_names.add(name)
                return name

    def decoy_value(self) -> str:
        while True:
            value = attribute_value(self.rng, self.attribute)
            if value != self.answer:
                return value

    def noise(self, low: int = 1, high: int = 5) -> list[str]:
        keys = list(NOISE_KEYS)
        chosen = np.argsort(self.rng.random(len(keys)))[: int(self.rng.integers(low, high))]  # without replacement
        return [f"{keys[i]} = {self.pick(NOISE_KEYS[keys[i]])}" for i in sorted(chosen)]

    # ----- files --------------------------------------------------------------------------
    def write(self, path: str, pointer: list[str], header: list[str] | None = None) -> None:
        """A config file: header, noise lines, and the pointer lines kept together at a random place."""
        body = self.noise()
        at = int(self.rng.integers(len(body) + 1))
        self.files[path] = (header or [self.pick(HEADERS)]) + body[:at] + pointer + body[at:]

    def env_line(self, name: str, value: str) -> None:
        self.files[self.pick(self.env_files)].append(f"{name}={value}")

    def env_comment(self) -> str:
        return ENV_COMMENT.format(env_dir=self.env_dir)

    def hop(self, kind: str) -> tuple[str, list[str]]:
        """(path of the next file, pointer lines naming it) for one hop of the chain."""
        if kind == "include":
            target = self.new_file()
            return target, [f"include = {target}"]
        if kind == "var_path":
            name, target = self.new_var(), self.new_file()
            self.env_line(name, target)
            return target, [self.env_comment(), f"config_file = ${{{name}}}"]
        if kind == "find":
            root = self.pick(ROOTS)
            target = self.new_file(self.random_dir(root))
            return target, [f"include_name = {target.rsplit('/', 1)[1]}{FIND_NOTE.format(root=root)}"]
        return self.profile_hop()

    def profile_hop(self) -> tuple[str, list[str]]:
        directory = f"{self.random_dir()}/profiles"
        while directory in self.profile_dirs:
            directory = f"{self.random_dir()}/profiles"
        self.profile_dirs.add(directory)
        numbers = sorted(int(n) for n in self.rng.choice(np.arange(1, 100), size=int(self.rng.integers(3, 8)),
                                                         replace=False))
        for number in numbers[:-1]:  # decoy profiles: the asked setting with other values
            self.write(f"{directory}/profile-{number:02d}.conf", [f"{self.attribute} = {self.decoy_value()}"])
        return f"{directory}/profile-{numbers[-1]:02d}.conf", [f"profile_dir = {directory}{PROFILE_NOTE}"]

    def final(self, kind: str, value: str) -> list[str]:
        if kind == "literal":
            return [f"{self.attribute} = {value}"]
        name = self.new_var()
        self.env_line(name, value)
        return [self.env_comment(), f"{self.attribute} = ${{{name}}}"]

    def chain(self, service: str, plan: ChainPlan, value: str) -> None:
        """Write a service's entry file and every file its chain goes through."""
        if plan.entry == "path":
            path = entry_path(service, "path")
        else:
            path = f"{self.random_dir('/srv')}/{entry_path(service, 'find')}"
            self.basenames.add(entry_path(service, "find"))
        header = [f"# service {service}"]
        for kind in plan.hops:
            target, pointer = self.hop(kind)
            self.write(path, pointer, header)
            path, header = target, None
        self.write(path, self.final(plan.final, value), header)

    def filler(self, count: int) -> None:
        """Files that look like the chain's: noise, decoy settings, includes of other filler."""
        written: list[str] = []
        for _ in range(count):
            path, roll = self.new_file(), self.rng.random()
            if roll < 0.25:  # a setting like the asked one (half of the time the asked one itself)
                other = self.attribute if self.rng.random() < 0.5 else self.pick(ATTRIBUTES)
                value = self.decoy_value() if other == self.attribute else attribute_value(self.rng, other)
                self.write(path, [f"{other} = {value}"])
            elif roll < 0.5 and written:
                self.write(path, [f"include = {self.pick(written)}"])
            else:
                self.write(path, [])
            written.append(path)
        for _ in range(3 * len(self.env_files)):
            self.env_line(self.new_var(), self.pick(written) if written and self.rng.random() < 0.3
                          else self.pick(NOISE_KEYS["workers"] + NOISE_KEYS["region"]))

    def finish(self) -> dict[str, str]:
        for path in self.env_files:
            lines = self.files[path]
            order = self.rng.permutation(len(lines))
            self.files[path] = ["# KEY=value, one per line"] + [lines[i] for i in order]
        return {path: "\n".join(lines) + "\n" for path, lines in self.files.items()}


def build_files(task: Task) -> dict[str, str]:
    """The file tree of a task generated by `generate_tasks` (deterministic)."""
    metadata = task.metadata
    config = FileSearchConfig(**metadata["config"])
    plan = plan_task(metadata["seed"], metadata["index"], config)
    rng = np.random.default_rng([metadata["seed"], metadata["index"], 1])
    builder = TreeBuilder(rng, config, plan.attribute, plan.value)
    builder.chain(plan.service, plan.chain, plan.value)
    others = [f"{p}-{s}" for p in SERVICE_PREFIXES for s in SERVICE_SUFFIXES if f"{p}-{s}" != plan.service]
    for i in rng.choice(len(others), size=config.distractors, replace=False):
        calls = int(rng.integers(1, MAX_DISTRACTOR_CALLS + 1))
        builder.chain(others[int(i)], plan_chain(rng, calls), builder.decoy_value())
    builder.filler(config.num_files)
    return builder.finish()
