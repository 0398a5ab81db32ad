"""``fedmtl deploy`` and what a consortium's deployment needs: certificates and keys
(:mod:`~fedmtl.app.deploy.certificates`), demo tables (:mod:`~fedmtl.app.deploy.demo`), Flower's
processes on this machine (:mod:`~fedmtl.app.deploy.processes`), Flower run configs of fedmtl
experiments (:mod:`~fedmtl.app.deploy.flwr_config`) and the command (:mod:`~fedmtl.app.deploy.command`)."""

from fedmtl.app.deploy.certificates import (
    DEFAULT_HOSTS,
    Certificates,
    NodeKey,
    make_certificates,
    make_node_key,
)
from fedmtl.app.deploy.demo import DEMO_SILO_TASKS, DEMO_TASKS, demo_tables
from fedmtl.app.deploy.processes import (
    CONNECTION,
    LocalDeployment,
    descendants,
    free_port,
    node_config_arg,
    wait_for_port,
)

__all__ = [
    "CONNECTION",
    "DEFAULT_HOSTS",
    "DEMO_SILO_TASKS",
    "DEMO_TASKS",
    "Certificates",
    "LocalDeployment",
    "NodeKey",
    "demo_tables",
    "descendants",
    "free_port",
    "make_certificates",
    "make_node_key",
    "node_config_arg",
    "wait_for_port",
]
