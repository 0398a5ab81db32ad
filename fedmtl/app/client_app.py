"""The Flower ClientApp: one silo's local training and evaluation on its own tasks.

Thin wiring: the silo comes from the node config (``partition-id``); its data, the balancing method
and the affinity probe a message asks for come from the :class:`~fedmtl.app.experiment.Experiment`
(built once per process); training from :mod:`fedmtl.core.training`; the messages from
:mod:`fedmtl.core.records`. Per-node state lives in ``context.state`` (the rounds this node has
trained).
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import Literal

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedmtl.app.experiment import Experiment, cached_experiment, config_json_from
from fedmtl.app.runtime import client_device
from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel, is_trunk_key
from fedmtl.core.records import (
    EvaluateReply,
    EvaluateRequest,
    Groups,
    TrainReply,
    TrainRequest,
)
from fedmtl.core.training import StepProbe, TrainResult, evaluate, mean_task_losses, train_local

PARTITION_ID = "partition-id"
NODE_STATE = "fedmtl.node"


@functools.lru_cache(maxsize=8)
def _shared_model(config_json: str, device: str, groups_json: str = "") -> MultiTaskModel:
    """One model object per process, device and task grouping, reused by every virtual client
    (weights are loaded from each message before use)."""
    groups = json.loads(groups_json) if groups_json else None
    return cached_experiment(config_json).new_model(groups).to(device)


def _model_for(config_json: str, device: str, groups: Groups | None) -> MultiTaskModel:
    """The shared model whose structure fits a message: one trunk, or one per task group."""
    return _shared_model(config_json, device, json.dumps(groups, sort_keys=True) if groups else "")


@functools.lru_cache(maxsize=256)
def _silo_data(
    config_json: str, silo_id: int, split: Literal["train", "test"], device: str
) -> LocalData:
    data = cached_experiment(config_json).silo_data(silo_id, split)
    return data.to(torch.device(device))


def _device(experiment: Experiment) -> str:
    runtime = experiment.config.runtime
    return client_device(runtime.name, runtime.params)


def _silo_id(context: Context, experiment: Experiment) -> int:
    value = context.node_config.get(PARTITION_ID)
    num_silos = len(experiment.partition.silos)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_silos:
        raise ValueError(
            f"node config '{PARTITION_ID}' must be a silo id in [0, {num_silos}), got {value!r}"
        )
    return value


def _round_seed(seed: int, silo_id: int, server_round: int) -> int:
    """A seed that depends only on (experiment seed, silo, round), not on scheduling or runtime."""
    return zlib.crc32(f"{seed}/{silo_id}/{server_round}".encode())


def _train_seeded(
    model: MultiTaskModel,
    data: LocalData,
    request: TrainRequest,
    seed: int,
    device: str,
    probe: StepProbe | None = None,
) -> TrainResult:
    """Train with the batch order, torch's global RNG (dropout) and the step balancing all set
    by ``seed``; the caller's global RNG state is restored afterwards. A stateful balancing
    method is built afresh each round: its state lives for the round's local steps. ``probe``
    measures task affinity along the way."""
    step_weights = None
    if request.local_weighting is not None:
        step_weights = Experiment.step_weights(request.local_weighting, seed)
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return train_local(
            model,
            data,
            request.train,
            torch.Generator().manual_seed(seed),
            update_mode=request.update_mode,
            step_weights=step_weights,
            probe=probe,
        )


def make_client_app(default_config_json: str | None = None) -> ClientApp:
    """The ClientApp; the experiment config comes from the run config, else ``default_config_json``."""
    app = ClientApp()

    def setup(context: Context) -> tuple[str, Experiment, int, str]:
        config_json = config_json_from(context.run_config, default_config_json)
        experiment = cached_experiment(config_json)
        return config_json, experiment, _silo_id(context, experiment), _device(experiment)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        _, experiment, silo_id, _ = setup(context)
        return Message(experiment.silo_info(silo_id).to_content(), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config_json, experiment, silo_id, device = setup(context)
        received, config = records.request_parts(msg.content)
        request = TrainRequest.from_config(config)
        model = _model_for(config_json, device, request.groups)
        records.load_arrays(model, received)
        data = _silo_data(config_json, silo_id, "train", device)
        loss_before = mean_task_losses(model, data)
        probe = None
        if request.affinity is not None:
            probe = experiment.affinity_probe(request.affinity, model, data)
        seed = _round_seed(experiment.config.seed, silo_id, request.server_round)
        result = _train_seeded(model, data, request, seed, device, probe)
        trained = records.state_arrays(model, list(received))
        deltas = {k: trained[k] - received[k] for k in received}
        task_deltas = None
        if result.task_trunk_deltas is not None:  # per_task mode: each task's share of its trunk
            deltas = {k: v for k, v in deltas.items() if not is_trunk_key(k)}
            task_deltas = {
                task: {key: share.detach().cpu().numpy() for key, share in shares.items()}
                for task, shares in result.task_trunk_deltas.items()
            }
        reply = TrainReply(
            deltas=deltas,
            num_examples=data.num_samples,
            steps=result.steps,
            task_examples=dict(data.labelled_counts()),
            train_loss=result.mean_loss,
            loss_before=loss_before,
            task_deltas=task_deltas,
            affinity={} if probe is None else probe.means(),
        )
        _remember_round(context, request.server_round)
        return Message(reply.to_content(), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        config_json, _, silo_id, device = setup(context)
        received, config = records.request_parts(msg.content)
        model = _model_for(config_json, device, EvaluateRequest.from_config(config).groups)
        records.load_arrays(model, received)
        stats = evaluate(model, _silo_data(config_json, silo_id, "test", device))
        return Message(EvaluateReply(stats).to_content(), reply_to=msg)

    return app


def _remember_round(context: Context, server_round: int) -> None:
    """Per-node state: how many rounds this node trained, and the last one."""
    state = context.state.config_records.get(NODE_STATE) or ConfigRecord({"rounds-trained": 0})
    state["rounds-trained"] = records.integer(state, "rounds-trained") + 1
    state["last-round"] = server_round
    context.state.config_records[NODE_STATE] = state


app = make_client_app()
"""The ClientApp for deployment (``flwr run``): the config comes from the run config."""
