"""Across machines: a simulation joins a running two-node Ray cluster and uses both nodes.

The cluster is two Ray nodes on this machine (``ray.cluster_utils.Cluster``: a head and a worker,
one CPU each, in their own temporary directory), which is how a head and a worker machine look to
fedmtl. ``fedmtl run runtime=simulation runtime.ray_address=<head>`` runs in a subprocess, as a user
would start it; with one CPU per client, Flower's pool places one client actor on each node. The
cluster's processes are ended by their ids (``Cluster.shutdown``), never by ``ray stop``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.runs import read_jsonl, run_fedmtl

pytestmark = [pytest.mark.slow, pytest.mark.simulation]


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:.*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*:FutureWarning")
def test_simulation_runs_clients_on_both_nodes_of_a_ray_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray is heavy to import; only this test (and simulated runs) need it.
    import ray  # noqa: PLC0415 - heavy, only for the cluster test
    from ray._private import state  # noqa: PLC0415 - the GCS actor table (no dashboard needed)
    from ray.cluster_utils import Cluster  # noqa: PLC0415 - heavy, only for the cluster test

    # Ray's Cluster writes its head's address to /tmp/ray/ray_current_cluster, where any
    # ray.init() without an address or temp dir on this machine finds it and joins this cluster:
    # Flower's local SuperLink of the `flwr run .` test did, in another xdist worker, and found
    # no free CPU ("ActorPool is empty"). The address is passed explicitly here instead.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    # A short path of its own: Ray's socket paths must stay under 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="fedmtl-ray-", dir="/tmp")
    head = {"num_cpus": 1, "temp_dir": temp_dir, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        result = run_fedmtl(
            [
                "run",
                "dataset=synthetic",
                "dataset.num_samples=600",
                "partition.num_silos=6",
                "num_rounds=2",
                "tracking=quiet",
                "tracking.plots=false",
                "runtime=simulation",
                "runtime.num_cpus=1",
                f"runtime.ray_address={cluster.address}",
                f"hydra.run.dir={out}",
            ],
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["runtime"] == "simulation" and summary["rejected"] == []
        trained = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
        assert [r["num_updates"] for r in trained] == [6, 6]

        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        try:
            actors = [a for a in state.actors().values() if a["ActorClassName"] == "ClientAppActor"]
        finally:
            ray.shutdown()
        nodes = {a["Address"]["NodeID"] for a in actors}
        cluster_nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert nodes == cluster_nodes and len(nodes) == 2, (nodes, cluster_nodes)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
