"""The README's multi-node recipe (issue 30): ``RAY_ADDRESS=HEAD lrp explain ... --ray`` joins a running cluster of
two nodes and writes what a plain run writes.

The cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``: a head and a second node, separate raylets on
this machine, one CPU each) in a helper process that this test starts and stops itself (never ``ray stop``: other
clusters on the machine are not ours). ``lrp`` runs as its own process with ``RAY_ADDRESS`` set, as a user on a login
node would. Two actors of one CPU each fit only on both nodes together; the cluster's job table must list the lrp
process as a driver, so the run joined this cluster and did not start its own. Skipped, saying so, without Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'lrpcli[ray]' to run the Ray tests")
pytest.importorskip("ray.data", reason="ray.data is not installed: pip install 'lrpcli[ray]'")

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "breast_cancer_mlp"

CLUSTER = """
import json, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.readline()  # the test ran lrp: say which drivers joined, then stop the cluster
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
drivers = [job["DriverPid"] for job in ray._private.state.jobs()]
print(json.dumps({"nodes": len(nodes), "drivers": drivers}), flush=True)
ray.shutdown()
cluster.shutdown()
"""

LRP = "import sys; from lrpcli.cli import main; main(sys.argv[1:])"


def test_lrp_joins_the_cluster_ray_address_names(tmp_path):
    import json

    spec, rows = SAMPLE / "model.yaml", SAMPLE / "sample.csv"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    plain = subprocess.run([sys.executable, "-c", LRP, "explain", str(spec), str(rows), "-q", "--no-report", "-b", "16", "-o", str(tmp_path / "plain.csv")], env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    helper = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = helper.stdout.readline().strip()
        assert address, "the test cluster did not start"
        args = ["explain", str(spec), str(rows), "-q", "--no-report", "-b", "16", "--ray", "--workers", "2", "-o", str(tmp_path / "ray.csv")]
        lrp = subprocess.Popen([sys.executable, "-c", LRP, *args], env={**env, "RAY_ADDRESS": address}, stderr=subprocess.PIPE, text=True)
        _, stderr = lrp.communicate(timeout=400)
        assert lrp.returncode == 0, stderr[-3000:]
        helper.stdin.write("done\n")
        helper.stdin.flush()
        seen = json.loads(helper.stdout.readline())
    finally:
        if helper.poll() is None:
            helper.stdin.close()
            try:
                helper.wait(timeout=120)
            except subprocess.TimeoutExpired:
                helper.kill()
    assert seen["nodes"] == 2 and lrp.pid in seen["drivers"], seen
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
