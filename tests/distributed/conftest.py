"""One private local Ray cluster per test module (Ray start-up costs seconds; tests share it).

Bound to 127.0.0.1, no dashboard, files in a fresh short temp dir (Ray's unix sockets need a
short path), shut down and removed after the module. Actor processes inherit PYTHONPATH from
the driver at `ray.init`, which is how they import the test environments of tests/rollout.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROLLOUT_TESTS = str(Path(__file__).resolve().parents[1] / "rollout")
if ROLLOUT_TESTS not in sys.path:
    sys.path.insert(0, ROLLOUT_TESTS)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from spo_agents.distributed.transport import init_ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="spo-ray-", dir="/tmp")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROLLOUT_TESTS, saved) if p)
    try:
        resources = init_ray(num_cpus=4, temp_dir=temp_dir, log_to_driver=False)
        yield resources
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)
