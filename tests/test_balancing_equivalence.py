"""The federation computes what the centralized method computes, in the setting where it must.

One silo per task, one full-batch step of plain SGD at rate eta: silo t's per-task update is
D_t = -eta g_t exactly, so the server's combined trunk update equals the method applied to
J = -eta [g_1; ...; g_T] centrally, and, for the methods whose weights are invariant to a positive
scale of J (``SCALE_INVARIANT``: w unchanged by J -> sJ, s > 0, and G = J J^T by the sign; not
Nash-MTL, whose norm clip, nor FairGrad, whose weight magnitude, depends on the scale;
tests/test_balancing.py checks the three), -eta times the centralized direction itself. The
ClientApp, the message protocol and the strategy all run for real (in process); the reference uses
only the model, the silos' data and :func:`strategies.balancing.combine`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import CONFIG_KEY, Experiment, prepare
from fedmtl.app.runtimes import InProcessGrid
from fedmtl.app.silo.client_app import make_client_app
from fedmtl.core import records
from fedmtl.core.data import local_view
from fedmtl.core.training import mean_task_losses
from strategies.balanced import Balanced
from strategies.balancing import WEIGHTINGS, combine
from strategies.engine import GlobalModel, RunContext
from tests.support.runs import compose_raw

ETA = 0.1
SEED = 3
SCALE_INVARIANT = {
    "mean",
    "sum",
    "mgda",
    "pcgrad",
    "gradvac",
    "imtl_g",
    "cagrad",
    "aligned_mtl",
    "upgrad",
    "dualproj",
}


def setting(name: str) -> tuple[Experiment, str]:
    raw = compose_raw(
        [
            f"strategy={name}",
            "dataset=synthetic",
            "dataset.num_samples=240",
            "dataset.num_tasks=3",
            "dataset.num_groups=3",
            "model.hidden=[16]",
            "partition.num_silos=3",
            "partition.assignment.k=1",
            "train.local_epochs=1",
            "train.max_steps=1",
            "train.batch_size=1000",
            "train.momentum=0.0",
            f"train.lr={ETA}",
            "runtime=inprocess",
            f"seed={SEED}",
        ]
    )
    config = parse(raw)
    return prepare(config), config.to_json()


def server_direction(
    experiment: Experiment, config_json: str
) -> tuple[torch.Tensor, Balanced, dict[str, float]]:
    """Run round 1 through the real ClientApp; return theta_1 - theta_0 of the trunk, the strategy
    and the task weights of the round."""
    engine = experiment.new_engine(RunContext())
    assert isinstance(engine.method, Balanced)
    model = experiment.new_model()
    start = records.state_arrays(model, model.exchanged_keys())
    grid = InProcessGrid(make_client_app(), 3, {CONFIG_KEY: config_json})
    sent = engine.dispatch_train(grid, 1, GlobalModel(start))
    result = engine.aggregate(sent, engine.take_updates(sent, grid.send_and_receive(sent.messages)))
    assert engine.rejections == [] and result is not None
    new = result.model.arrays
    keys = [k for k in start if k.startswith("trunk.")]
    delta = np.concatenate([(new[k] - start[k]).reshape(-1) for k in keys])
    return torch.from_numpy(delta.astype(np.float64)), engine.method, result.task_weights


def centralized_jacobian(experiment: Experiment) -> tuple[torch.Tensor, torch.Tensor]:
    """J (rows g_t, in task order) and each task's loss at theta_0 on its silo's training data."""
    model = experiment.new_model()
    rows, losses = [], []
    for task in experiment.dataset.task_names:
        (silo,) = [s for s in experiment.partition.silos if task in s.tasks]
        data = local_view(experiment.dataset, silo.train_indices, [task])
        losses.append(mean_task_losses(model, data)[task])
        model.train()
        spec = data.tasks[0]
        loss = spec.loss(model(data.inputs, [task])[task], data.targets[task])
        grads = torch.autograd.grad(loss, list(model.trunk.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows), torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_server_direction_equals_the_centralized_method(name: str) -> None:
    experiment, config_json = setting(name)
    assert all(len(s.tasks) == 1 for s in experiment.partition.silos)
    direction, strategy, task_weights = server_direction(experiment, config_json)
    J, losses = centralized_jacobian(experiment)
    params = dataclasses.asdict(strategy.params.weighting.params)
    expected, weights = combine(name, -ETA * J, losses=losses, seed=SEED, **params)
    torch.testing.assert_close(direction, expected, rtol=2e-3, atol=1e-6)
    assert list(task_weights.values()) == pytest.approx(weights.tolist(), rel=2e-3, abs=1e-6)
    if name in SCALE_INVARIANT:
        central, _ = combine(name, J, losses=losses, seed=SEED, **params)
        torch.testing.assert_close(direction, -ETA * central, rtol=2e-3, atol=1e-6)
