"""The direction of dependencies, checked by parsing imports with `ast`.

- Built-in environments (envs/spo_env_*) use only the public kit: spo_agents.env,
  spo_agents.grading, spo_agents.tools, spo_agents.sandbox.
- The environment kit never imports the learner, rollout, backends or trainer.
- The learner never imports an environment, the environment kit or a backend.
- Rollout and learning code never import an environment module (spo_env_*).
- Backends never import the learner.
- Rollout never imports a higher layer (trainer, distributed, bench, cli), not even lazily inside
  a function: executors that live above it register themselves (spo_agents.rollout.executors).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_KIT = ("spo_agents.env", "spo_agents.grading", "spo_agents.tools", "spo_agents.sandbox")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files_under(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


def violations(files, forbidden, allowed=()):
    found = []
    for path in files:
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden) and not any(
                module == a or module.startswith(a + ".") for a in allowed
            ):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


def test_builtin_envs_use_only_the_public_kit():
    assert files_under("envs")
    assert violations(files_under("envs"), ["spo_agents"], allowed=PUBLIC_KIT + ("spo_agents",)) == []
    bare = [p for p in files_under("envs") if "spo_agents" in imported_modules(p)]
    assert bare == [], "import from the kit modules, not the top-level package"


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("env", ["spo_agents.learner", "spo_agents.rollout", "spo_agents.backends", "spo_agents.trainer",
                 "spo_agents.bench", "torch"]),
        ("learner", ["spo_agents.env", "spo_agents.backends", "spo_agents.rollout.engine", "spo_env_", "gymnasium"]),
        ("rollout", ["spo_env_", "spo_agents.learner", "spo_agents.trainer", "spo_agents.distributed",
                     "spo_agents.bench", "spo_agents.cli", "spo_agents.serve", "ray"]),
        ("backends", ["spo_agents.learner", "spo_agents.env", "spo_env_"]),
        ("grading", ["spo_agents.learner", "spo_agents.rollout", "spo_agents.backends", "torch"]),
        ("sandbox", ["spo_agents.learner", "spo_agents.rollout", "spo_agents.backends", "torch"]),
    ],
)
def test_direction_of_dependencies(package, forbidden):
    files = files_under("spo_agents", package)
    prefix_hits = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in files
        for m in imported_modules(p)
        if any(m == f or m.startswith(f) for f in forbidden)
    ]
    assert prefix_hits == []


def test_no_environment_module_imported_outside_envs_and_cli():
    framework = [p for p in files_under("spo_agents") if "cli" not in p.parts]
    hits = [f"{p.relative_to(ROOT)}" for p in framework for m in imported_modules(p) if m.startswith("spo_env_")]
    assert hits == []


def test_the_rollout_layer_names_no_higher_module_even_as_a_string():
    """`importlib.import_module("spo_agents.distributed...")` would dodge the import check above."""
    hits = [f"{p.relative_to(ROOT)}" for p in files_under("spo_agents", "rollout")
            if any(name in p.read_text(encoding="utf-8") for name in ("spo_agents.distributed", "spo_agents.trainer"))]
    assert hits == []


def test_the_ray_executor_is_registered_by_the_composition_root_and_loaded_on_use():
    from spo_agents.rollout.executors import env_executor_names

    assert {"thread", "process", "ray"} <= set(env_executor_names())
