"""A plain process forms its one-rank group without a rendezvous: no port is picked (one picked
free and bound later can be taken meanwhile), and the processes it starts inherit no address to join."""

import subprocess
import sys

from tests.distributed.conftest import REPO

PROGRAM = """
import os
import torch
import torch.distributed as dist
from dimerec_dist.runtime.process_group import init_distributed, shutdown
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(name, None)
ctx = init_distributed("cpu")
tensor = torch.ones(1)
dist.all_reduce(tensor)
print(ctx.rank, ctx.world_size, float(tensor), "MASTER_ADDR" in os.environ, "MASTER_PORT" in os.environ)
shutdown()
"""


def test_a_plain_process_forms_its_group_without_a_port_and_passes_none_on():
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "1", "1.0", "False", "False"]
