"""The Flower ClientApp: one silo's local training and evaluation on its own tasks.

Thin wiring: the silo comes from the node config (``partition-id``), data and model from
:func:`fedmtl.experiment.cached_experiment` (built once per process), training from
:mod:`fedmtl.training`, the message format from :mod:`fedmtl.records`. Per-node state lives in
``context.state`` (the rounds this node has trained).
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import Literal

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from fedmtl import records
from fedmtl.experiment import Experiment, cached_experiment, config_json_from
from fedmtl.models import MultiTaskModel
from fedmtl.models.multitask import is_trunk_key
from fedmtl.records import SiloInfo, TrainRequest
from fedmtl.runtime import client_device
from fedmtl.training import (
    LocalData,
    TrainResult,
    evaluate,
    mean_task_losses,
    train_local,
)
from partitions.views import silo_data
from strategies.balancing import build_weighting
from strategies.grouping.affinity import SiloProbe, silo_probe

PARTITION_ID = "partition-id"
NODE_STATE = "fedmtl.node"


@functools.lru_cache(maxsize=8)
def _shared_model(config_json: str, device: str, groups_json: str = "") -> MultiTaskModel:
    """One model object per process, device and task grouping, reused by every virtual client
    (weights are loaded from each message before use)."""
    groups = json.loads(groups_json) if groups_json else None
    return cached_experiment(config_json).new_model(groups).to(device)


def _message_model(config_json: str, device: str, config: ConfigRecord) -> MultiTaskModel:
    """The shared model whose structure fits a message: one trunk, or one per task group."""
    groups = records.groups_from_config(config)
    return _shared_model(config_json, device, json.dumps(groups, sort_keys=True) if groups else "")


@functools.lru_cache(maxsize=256)
def _silo_data(
    config_json: str, silo_id: int, split: Literal["train", "test"], device: str
) -> LocalData:
    experiment = cached_experiment(config_json)
    data = silo_data(experiment.dataset, experiment.partition, silo_id, split)
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


def silo_info(experiment: Experiment, silo_id: int) -> SiloInfo:
    silo = experiment.partition.silos[silo_id]
    return SiloInfo(
        silo_id=silo_id,
        tasks=silo.tasks,
        num_train=silo.num_train,
        num_test=silo.num_test,
        train_per_task=silo.labelled_counts(experiment.dataset, "train"),
        test_per_task=silo.labelled_counts(experiment.dataset, "test"),
    )


def _round_seed(seed: int, silo_id: int, server_round: int) -> int:
    """A seed that depends only on (experiment seed, silo, round), not on scheduling or runtime."""
    return zlib.crc32(f"{seed}/{silo_id}/{server_round}".encode())


def _train_seeded(
    model: MultiTaskModel,
    data: LocalData,
    request: TrainRequest,
    seed: int,
    device: str,
    probe: SiloProbe | None = None,
) -> TrainResult:
    """Train with the batch order, torch's global RNG (dropout) and the step weighting all set
    by ``seed``; the caller's global RNG state is restored afterwards. A stateful weighting is
    built afresh each round: its state lives for the round's local steps. ``probe`` measures
    task affinity along the way."""
    weighting = None
    if request.weighting is not None:
        name, params = request.weighting
        weighting = build_weighting(name, params, seed=seed, key="weighting-params").weights
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return train_local(
            model,
            data,
            request.train,
            torch.Generator().manual_seed(seed),
            update_mode=request.update_mode,
            weighting=weighting,
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
        info = silo_info(experiment, silo_id)
        return Message(RecordDict({records.SILO: info.to_record()}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config_json, experiment, silo_id, device = setup(context)
        received = records.from_array_record(msg.content.array_records[records.ARRAYS])
        config = msg.content.config_records[records.CONFIG]
        server_round = records.integer(config, records.SERVER_ROUND)
        request = records.train_request_from_record(config)
        model = _message_model(config_json, device, config)
        records.load_arrays(model, received)
        data = _silo_data(config_json, silo_id, "train", device)
        loss_before = mean_task_losses(model, data)
        probe = None
        if request.affinity is not None:
            probe = silo_probe(request.affinity.name, model, data, request.affinity.every)
        result = _train_seeded(
            model,
            data,
            request,
            _round_seed(experiment.config.seed, silo_id, server_round),
            device,
            probe,
        )
        trained = records.state_arrays(model, list(received))
        deltas = {k: trained[k] - received[k] for k in received}
        if result.task_trunk_deltas is not None:  # per_task mode: each task's share of its trunk
            deltas = {k: v for k, v in deltas.items() if not is_trunk_key(k)}
            for task, shares in result.task_trunk_deltas.items():
                for key, share in shares.items():
                    deltas[records.task_update_key(task, key)] = share.detach().cpu().numpy()
        metrics: dict[str, MetricRecordValues] = {
            records.NUM_EXAMPLES: data.num_samples,
            records.STEPS: result.steps,
        }
        for task, count in data.labelled_counts().items():
            metrics[records.task_key(task, records.NUM_EXAMPLES)] = count
        for task, loss in result.mean_loss.items():
            metrics[records.task_key(task, records.TRAIN_LOSS)] = loss
        for task, loss in loss_before.items():
            metrics[records.task_key(task, records.LOSS_BEFORE)] = loss
        for (source, target), value in ({} if probe is None else probe.means()).items():
            metrics[records.affinity_key(source, target)] = value
        _remember_round(context, server_round)
        content = RecordDict(
            {
                records.UPDATE: records.to_array_record(deltas),
                records.METRICS: MetricRecord(metrics),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        config_json, _, silo_id, device = setup(context)
        model = _message_model(config_json, device, msg.content.config_records[records.CONFIG])
        records.load_arrays(
            model, records.from_array_record(msg.content.array_records[records.ARRAYS])
        )
        stats = evaluate(model, _silo_data(config_json, silo_id, "test", device))
        metrics: dict[str, MetricRecordValues] = {
            records.task_key(task, stat): value
            for task, task_stats in stats.items()
            for stat, value in task_stats.items()
        }
        return Message(RecordDict({records.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


def _remember_round(context: Context, server_round: int) -> None:
    """Per-node state: how many rounds this node trained, and the last one."""
    state = context.state.config_records.get(NODE_STATE) or ConfigRecord({"rounds-trained": 0})
    state["rounds-trained"] = records.integer(state, "rounds-trained") + 1
    state["last-round"] = server_round
    context.state.config_records[NODE_STATE] = state


app = make_client_app()
"""The ClientApp for deployment (``flwr run``): the config comes from the run config."""
