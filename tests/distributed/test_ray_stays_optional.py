"""Ray stays optional: only spo_agents/distributed imports it, and the in-process path
(engine with the thread executor) runs without loading it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_distributed_package_imports_ray():
    files = sorted((ROOT / "spo_agents").rglob("*.py")) + sorted((ROOT / "envs").rglob("*.py"))
    importers = {str(p.relative_to(ROOT)) for p in files
                 if any(n == "ray" or n.startswith("ray.") for n in imports(p))}
    assert importers and all(p.startswith("spo_agents/distributed/") for p in importers), importers


def test_the_in_process_engine_does_not_load_ray():
    code = (
        "import asyncio, sys\n"
        "import spo_agents.distributed\n"
        "from spo_agents.rollout.config import RolloutConfig, RolloutMode\n"
        "from spo_agents.rollout.engine import RolloutEngine\n"
        "from spo_agents.rollout.scripted import ScriptedBackend, product_policy\n"
        "b = ScriptedBackend(product_policy)\n"
        "config = RolloutConfig(num_slots=2, mode=RolloutMode.BATCH, group_size=1)\n"
        "e = RolloutEngine('spo/Calculator-v0', b, b.formatter, config)\n"
        "episodes = asyncio.run(e.collect_batch(['calc-L2-00002'])); e.close()\n"
        "assert episodes[0].reward == 1.0, episodes\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
