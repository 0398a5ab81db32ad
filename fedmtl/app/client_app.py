"""The Flower ClientApp: one silo's local training and evaluation on its own tasks.

Thin wiring: the silo comes from the node config (``partition-id``); its data, the balancing method
and the affinity probe a message asks for come from the :class:`~fedmtl.app.experiment.Experiment`
(built once per process); what the silo does with a message, in each personal mode, from
:mod:`fedmtl.app.silo`; the messages from :mod:`fedmtl.core.records`. Per-node state lives in
``context.state``: the silo's personal arrays (:data:`fedmtl.app.silo.PERSONAL`) and the rounds
this node has trained.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedmtl.app.experiment import Experiment, adopt, cached_experiment, config_json_from
from fedmtl.app.runtime import Shipment, client_device
from fedmtl.app.silo import SiloWorker, round_seed, run_evaluate, run_train
from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import Arrays, EvaluateRequest, Groups, TrainRequest

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


def _worker(
    config_json: str,
    experiment: Experiment,
    silo_id: int,
    device: str,
    context: Context,
    request: TrainRequest | EvaluateRequest,
    split: Literal["train", "test"] = "train",
) -> SiloWorker:
    """The silo's tools for one message: the shared model of the message's structure, the
    silo's rows of ``split``, its node state and its round seed."""
    groups = request.groups
    return SiloWorker(
        model=_model_for(config_json, device, groups),
        data=_silo_data(config_json, silo_id, split, device),
        state=context.state,
        initial=lambda: _initial_arrays(config_json, json.dumps(groups, sort_keys=True)),
        seed=round_seed(experiment.config.seed, silo_id, request.server_round),
        device=device,
    )


@functools.lru_cache(maxsize=8)
def _initial_arrays(config_json: str, groups_json: str) -> Arrays:
    """The seeded initial model's arrays (the server starts from the same)."""
    groups = json.loads(groups_json)
    model = cached_experiment(config_json).new_model(groups)
    return records.state_arrays(model, model.exchanged_keys())


def _device(experiment: Experiment) -> str:
    runtime = experiment.config.runtime
    return client_device(runtime.name, runtime.params)


@functools.cache
def _use_cpu_share(runtime_name: str, params: Any) -> None:
    """On the simulation runtime, torch's intra-op threads in this worker process = the client's
    CPU share ``runtime.num_cpus`` (at least 1), whatever thread count the process inherited:
    clients sharing the machine's cores do not oversubscribe them (once per process)."""
    if runtime_name == "simulation":
        torch.set_num_threads(max(1, int(params.num_cpus)))


def _silo_id(context: Context, experiment: Experiment) -> int:
    value = context.node_config.get(PARTITION_ID)
    num_silos = len(experiment.partition.silos)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_silos:
        raise ValueError(
            f"node config '{PARTITION_ID}' must be a silo id in [0, {num_silos}), got {value!r}"
        )
    return value


def make_client_app(
    default_config_json: str | None = None, shipment: Shipment | None = None
) -> ClientApp:
    """The ClientApp; the experiment config comes from the run config, else ``default_config_json``.
    ``shipment``: the driver's experiment for that config, adopted instead of building it again
    (:class:`fedmtl.app.runtime.Shipment`)."""
    app = ClientApp()

    def setup(context: Context) -> tuple[str, Experiment, int, str]:
        config_json = config_json_from(context.run_config, default_config_json)
        if shipment is not None and config_json == default_config_json:
            adopt(config_json, shipment.get())
        experiment = cached_experiment(config_json)
        _use_cpu_share(experiment.config.runtime.name, experiment.config.runtime.params)
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
        worker = _worker(config_json, experiment, silo_id, device, context, request)
        step_weights = None
        if request.local_weighting is not None:
            step_weights = Experiment.step_weights(request.local_weighting, worker.seed)
        probe = None
        if request.affinity is not None:
            probe = experiment.affinity_probe(request.affinity, worker.model, worker.data)
        reply = run_train(worker, received, request, step_weights, probe)
        _remember_round(context, request.server_round)
        return Message(reply.to_content(), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        config_json, experiment, silo_id, device = setup(context)
        received, config = records.request_parts(msg.content)
        request = EvaluateRequest.from_config(config)
        worker = _worker(config_json, experiment, silo_id, device, context, request, "test")
        return Message(run_evaluate(worker, received, request).to_content(), reply_to=msg)

    return app


def _remember_round(context: Context, server_round: int) -> None:
    """Per-node state: how many rounds this node trained, and the last one."""
    state = context.state.config_records.get(NODE_STATE) or ConfigRecord({"rounds-trained": 0})
    state["rounds-trained"] = records.integer(state, "rounds-trained") + 1
    state["last-round"] = server_round
    context.state.config_records[NODE_STATE] = state


app = make_client_app()
"""The ClientApp for deployment (``flwr run``): the config comes from the run config."""
