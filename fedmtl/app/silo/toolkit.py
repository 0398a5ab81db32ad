"""The one silo toolkit every runtime uses: from a message and its node's context to the method's
silo half, ready to run, and back.

:class:`Silo` turns a train or evaluate message into a :class:`Prepared` job (the request, the
received arrays, the method's silo half and its :class:`~strategies.engine.SiloTools`) after
every check of what the server sent; the ClientApp (:mod:`fedmtl.app.silo.client_app`) runs the job and
the ``vectorized`` runtime (:mod:`fedmtl.app.silo.batch`) trains the batchable ones together, both
through here, so both refuse the same requests.

What the server sends is checked before any work: the experiment config (it may name no file
when it comes from the run config), the method (a silo refuses one it has no plug-in for), the
request's values against the silo's limits (:class:`fedmtl.app.silo.node.Limits`), the received
arrays against the model (known keys, their shapes, finite values). Per-node state lives in
``context.state``: the silo's personal arrays (:data:`strategies.engine.silo.PERSONAL`), the rounds
this node has trained, and the fingerprint of the rows and tasks it announced (fixed for the run).
A silo the run's fault makes faulty (:mod:`fedmtl.faults`; the experiment knows which) trains on
the fault's rows and corrupts its reply (:meth:`Silo.reply`, :mod:`fedmtl.app.silo.faulty`); a
config from the run config (a deployment) that injects faults is refused.
A silo that keeps personal arrays (or the error-feedback residual of compressed updates) also
saves them to files after each round it trains in, and a resumed run restores them from there
(:mod:`fedmtl.app.run.checkpoint`): in simulations under the run directory, on a SuperNode in the
directory its node config's ``state-dir`` names (without it, a SuperNode keeps its state in
memory only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedmtl.app.run.checkpoint import restore_silo_state, save_silo_state, silo_state_dir
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import (
    CONFIG_KEY,
    Experiment,
    adopt,
    cached_experiment,
    config_json_from,
    named_files,
)
from fedmtl.app.run.plugins import PLUGINS_KEY
from fedmtl.app.runtimes import Shipment, client_device, silo_threads
from fedmtl.app.silo.faulty import corrupt_reply
from fedmtl.app.silo.node import NodeSettings, RequestRefused, SiloData, load_silo, node_settings
from fedmtl.core import records
from fedmtl.core.compression import compress
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import (
    Arrays,
    EvaluateRequest,
    Groups,
    MethodSpec,
    TrainReply,
    TrainRequest,
)
from fedmtl.faults import NONE, Fault
from strategies import METHODS
from strategies.engine import SiloMethod, SiloTools, round_seed, silo_dp_sgd
from strategies.engine.silo import RESIDUAL

NODE_STATE = "fedmtl.node"
SILO_STATE = "fedmtl.silo"
"""The node-state record holding the fingerprint of the silo's announced rows and tasks."""
RESTORED = "fedmtl.restored"
"""Node-state record set once a resumed run has restored the silo's saved state (per scope)."""

log = logging.getLogger("fedmtl")


@functools.lru_cache(maxsize=8)
def _shared_model(config_json: str, device: str, groups_json: str = "") -> MultiTaskModel:
    """One model object per process, device and task grouping, reused by every virtual client
    (weights are loaded from each message before use)."""
    groups = json.loads(groups_json) if groups_json else None
    return cached_experiment(config_json).new_model(groups).to(device)


def shared_model(config_json: str, device: str, groups: Groups | None) -> MultiTaskModel:
    """The shared model whose structure fits a message: one trunk, or one per task group."""
    return _shared_model(config_json, device, json.dumps(groups, sort_keys=True) if groups else "")


@functools.cache
def _silo(config_json: str, node: NodeSettings) -> SiloData:
    """The silo a node holds, built once per process and run config (an in-process runtime
    serves every silo from one process, round after round: a bounded cache smaller than the
    federation rebuilt every silo at every message); a faulty one with the training rows its
    fault gives it."""
    experiment = cached_experiment(config_json)
    silo = load_silo(experiment, node)
    fault = experiment.silo_fault(silo.silo_id)
    if fault is None:
        return silo
    return dataclasses.replace(silo, train=fault.train_data(silo.train))


@functools.cache
def silo_rows(
    config_json: str, node: NodeSettings, split: Literal["train", "test"], device: str
) -> LocalData:
    """The silo's rows of ``split`` on ``device`` (built once per process)."""
    silo = _silo(config_json, node)
    return (silo.train if split == "train" else silo.test).to(torch.device(device))


@functools.lru_cache(maxsize=8)
def _initial_arrays(config_json: str, groups_json: str) -> Arrays:
    """The seeded initial model's arrays (the server starts from the same)."""
    groups = json.loads(groups_json)
    model = cached_experiment(config_json).new_model(groups)
    return records.state_arrays(model, model.exchanged_keys() + model.local_keys())


@functools.lru_cache(maxsize=8)
def _named_files(config_json: str) -> tuple[str, ...]:
    """The files an experiment config names (parsed once per process and config: parsing on
    every message cost 3 ms, 30 s of discovery at 10,000 silos)."""
    return tuple(named_files(parse(json.loads(config_json))))


@contextmanager
def refusing(what: str) -> Iterator[None]:
    """Turn a parse error of server-sent values into a refusal that says what was wrong."""
    try:
        yield
    except (KeyError, ValueError, TypeError) as err:  # ConfigError is a ValueError
        raise RequestRefused(f"{what}: {err}") from None


@functools.cache
def _use_worker_threads(runtime_name: str, params: Any) -> None:
    """On the simulation runtime, torch's intra-op threads in this worker process =
    :func:`silo_threads` (``runtime.num_threads``, else the client's CPU share), whatever thread
    count the process inherited: clients sharing the machine's cores do not oversubscribe them
    (once per process). The in-process runtimes set their own around the run."""
    if runtime_name == "simulation":
        torch.set_num_threads(silo_threads(runtime_name, params))


def check_arrays(model: MultiTaskModel, received: Arrays) -> None:
    """The received arrays are parameters of the model, of its shapes, with finite values."""
    state = model.state_dict()
    for key, value in received.items():
        if key not in state:
            raise RequestRefused(f"the model has no parameter {key!r}")
        if tuple(value.shape) != tuple(state[key].shape):
            raise RequestRefused(
                f"{key}: shape {tuple(value.shape)} != the model's {tuple(state[key].shape)}"
            )
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise RequestRefused(f"{key}: values must be finite floating-point numbers")


def silo_method(spec: MethodSpec) -> SiloMethod:
    """The silo half of the method a request names, with its parameters checked; a method this
    silo has no plug-in for is refused, naming it."""
    if spec.name not in METHODS:
        raise RequestRefused(
            f"unknown method {spec.name!r}: this silo has no plug-in of that name (it knows "
            f"{METHODS.names()}); install the package that provides it on this node"
        )
    with refusing(f"method {spec.name!r}"):
        return METHODS.get(spec.name).factory.silo.from_spec(spec.params)


@dataclass
class Prepared:
    """A checked train or evaluate message, ready to run: its request, the received arrays, the
    method's silo half and the silo's tools; ``directory``: where the silo saves its state;
    ``fault``: what the silo does wrong on purpose (None: honest), with the run's ``seed``."""

    request: TrainRequest | EvaluateRequest
    received: Arrays
    method: SiloMethod
    tools: SiloTools
    directory: Path | None
    silo_id: int
    fault: Fault | None
    seed: int


class Silo:
    """One process's silo side of a run. The experiment config comes from the run config, else
    ``default_config_json``; ``shipment``: the driver's experiment for that config, adopted
    instead of building it again (:class:`fedmtl.app.runtimes.Shipment`)."""

    def __init__(self, default_config_json: str | None = None, shipment: Shipment | None = None):
        self.default_config_json = default_config_json
        self.shipment = shipment

    def experiment(self, context: Context) -> tuple[str, Experiment]:
        """The run's experiment. A config from the run config (sent by whoever started the run)
        may name no file and no plug-in: a silo opens only the files of its own node config and
        runs only the code installed on its machine."""
        with refusing("experiment config"):
            config_json = config_json_from(context.run_config, self.default_config_json)
            from_run_config = bool(context.run_config.get(CONFIG_KEY))
            if from_run_config and json.loads(config_json).get(PLUGINS_KEY):
                raise RequestRefused(
                    "the experiment config names plug-ins to load; a silo loads only the plug-ins "
                    "installed on its own machine"
                )
            fault = json.loads(config_json).get("fault") or {}
            if from_run_config and fault.get("name", NONE) != NONE:
                raise RequestRefused(
                    f"the experiment config injects faults (fault={fault.get('name')!r}); a "
                    "deployed silo never misbehaves on request: fault injection is for "
                    "simulations"
                )
            files = _named_files(config_json)
        if files and from_run_config:
            raise RequestRefused(
                f"the experiment config names files ({', '.join(files)}); a silo opens only the "
                "files its own node config names"
            )
        if self.shipment is not None and config_json == self.default_config_json:
            adopt(config_json, self.shipment.get())
        with refusing("experiment config"):
            experiment = cached_experiment(config_json)
        _use_worker_threads(experiment.config.runtime.name, experiment.config.runtime.params)
        return config_json, experiment

    def setup(self, context: Context) -> tuple[str, Experiment, NodeSettings, SiloData, str]:
        """The node's config JSON, experiment, node settings, silo and device."""
        config_json, experiment = self.experiment(context)
        node = node_settings(context.node_config)
        if node.unknown:
            log.warning("node config keys %s are not fedmtl's; ignored", list(node.unknown))
        silo = _silo(config_json, node)
        _fix_for_run(context, silo)
        runtime = experiment.config.runtime
        return config_json, experiment, node, silo, client_device(runtime.name, runtime.params)

    def released(self, reply: TrainReply, context: Context) -> TrainReply:
        """What the silo sends of ``reply``: under differential privacy, no losses (DP covers the
        update, not the losses measured on the rows)."""
        if self.experiment(context)[1].config.privacy.params.dp == "none":
            return reply
        return dataclasses.replace(reply, train_loss={}, loss_before={})

    def seed(self, context: Context) -> int:
        """The run's seed (SecAgg+ seeds its stochastic rounding with it)."""
        return int(self.experiment(context)[1].config.seed)

    def prepare_train(self, message: Message, context: Context) -> Prepared:
        """A train message checked (module docstring) and ready to run."""
        with refusing("train request"):
            received, config = records.request_parts(message.content)
            request = TrainRequest.from_config(config)
        prepared = self._prepare(context, request, received, "train")
        node = node_settings(context.node_config)
        phases = prepared.method.phases(request)
        node.limits.check(request, phases, prepared.tools.data.num_samples)
        return prepared

    def prepare_evaluate(self, message: Message, context: Context) -> Prepared:
        """An evaluate message checked and ready to run."""
        with refusing("evaluate request"):
            received, config = records.request_parts(message.content)
            request = EvaluateRequest.from_config(config)
        return self._prepare(context, request, received, "test")

    def _prepare(
        self,
        context: Context,
        request: TrainRequest | EvaluateRequest,
        received: Arrays,
        split: Literal["train", "test"],
    ) -> Prepared:
        config_json, experiment, node, silo, device = self.setup(context)
        method = silo_method(request.method)
        groups = request.groups
        with refusing("task groups"):
            model = shared_model(config_json, device, groups)
        check_arrays(model, received)
        tools = SiloTools(
            model=model,
            data=silo_rows(config_json, node, split, device),
            state=context.state,
            initial=lambda: _initial_arrays(config_json, json.dumps(groups, sort_keys=True)),
            seed=round_seed(experiment.config.seed, silo.silo_id, request.server_round),
            device=device,
            scope=request.scope,
        )
        privacy = experiment.config.privacy.params
        if isinstance(request, TrainRequest) and privacy.dp == "record":
            rows = tools.data.num_samples
            tools.dp = silo_dp_sgd(privacy, request.train, experiment.config.num_rounds, rows)
        directory = _state_dir(context, experiment, node, silo.silo_id, request.scope)
        resume = request.checkpoint.resume_round
        restored = f"{RESTORED}/{request.scope}" if request.scope else RESTORED
        if directory and resume and restored not in context.state.config_records:
            context.state.config_records[restored] = ConfigRecord({"resume-round": resume})
            saved = restore_silo_state(directory, resume)
            if saved is not None:
                restore_state(tools, saved)
        tools.load_local()
        fault = experiment.silo_fault(silo.silo_id)
        return Prepared(
            request, received, method, tools, directory, silo.silo_id, fault, experiment.config.seed
        )

    def query(self, context: Context) -> RecordDict:
        """The content of the reply to ``query``: what the silo announces."""
        _, _, _, silo, _ = self.setup(context)
        return silo.info.to_content()

    @staticmethod
    def reply(prepared: Prepared, context: Context, reply: TrainReply) -> TrainReply:
        """The reply the silo sends for its honest ``reply``: corrupted by its fault, if it is
        faulty (:mod:`fedmtl.app.silo.faulty`), then compressed as the request asks
        (:func:`fedmtl.core.compression.compress`, with the silo's error-feedback residual and a
        generator seeded by (seed, silo, round))."""
        request = prepared.request
        assert isinstance(request, TrainRequest)
        if prepared.fault is not None:
            reply = corrupt_reply(
                prepared.fault,
                reply,
                context.state,
                request.scope,
                prepared.seed,
                prepared.silo_id,
                request.server_round,
            )
        if request.compression.kind == "none":
            return reply
        rng = np.random.default_rng((prepared.seed, prepared.silo_id, request.server_round))
        tools = prepared.tools
        wire, residual = compress(reply.wire_arrays(), request.compression, tools.residual(), rng)
        tools.set_residual(residual)
        return reply.with_wire_arrays(wire)

    @staticmethod
    def trained(prepared: Prepared, context: Context) -> None:
        """After a train message: the node's round count, and the silo's personal arrays (if
        it keeps any) to its state files."""
        request = prepared.request
        state = context.state.config_records.get(NODE_STATE) or ConfigRecord({"rounds-trained": 0})
        state["rounds-trained"] = records.integer(state, "rounds-trained") + 1
        state["last-round"] = request.server_round
        context.state.config_records[NODE_STATE] = state
        prepared.tools.keep_local()
        kept = silo_state(prepared.tools)
        if prepared.directory is not None and kept:
            assert isinstance(request, TrainRequest)
            saved = request.checkpoint.saved_round
            save_silo_state(prepared.directory, request.server_round, kept, saved)


def silo_state(tools: SiloTools) -> Arrays:
    """What the silo saves to its state files: its personal arrays and, under
    :data:`~strategies.engine.silo.RESIDUAL` ``/`` + wire key, its error-feedback residual."""
    residual = {f"{RESIDUAL}/{key}": value for key, value in tools.residual().items()}
    return {**(tools.personal() or {}), **residual}


def restore_state(tools: SiloTools, saved: Arrays) -> None:
    """Put what :func:`silo_state` saved back into the node state, where it holds nothing yet."""
    prefix = f"{RESIDUAL}/"
    residual = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
    personal = {k: v for k, v in saved.items() if not k.startswith(prefix)}
    if personal and tools.personal() is None:
        tools.set_personal(personal)
    if residual and not tools.residual():
        tools.set_residual(residual)


def _fix_for_run(context: Context, silo: SiloData) -> None:
    """Remember the fingerprint of what the silo announced; refuse to go on when it changed."""
    state = context.state.config_records.get(SILO_STATE) or ConfigRecord()
    known = state.get("fingerprint")
    if known is None:
        state["fingerprint"] = silo.fingerprint
        context.state.config_records[SILO_STATE] = state
    elif known != silo.fingerprint:
        raise RuntimeError(
            "the silo's rows or tasks changed since it announced them in this run; restart the "
            "run (or restore the data) to go on"
        )


def _state_dir(
    context: Context, experiment: Experiment, node: NodeSettings, silo_id: int, scope: str
) -> Path | None:
    """Where the silo saves its own state (in a subdirectory per ``scope``, if any): its node
    config's ``state-dir``; else, in a simulation, the run directory's
    ``checkpoint/silos/silo-<id>``; else (a SuperNode without ``state-dir``: the server names no
    path on a silo) nowhere."""
    if node.state_dir is not None:
        directory = Path(node.state_dir) / f"silo-{silo_id}"
    elif context.run_config.get(CONFIG_KEY):
        return None
    else:
        directory = silo_state_dir(Path(experiment.config.output_dir), silo_id)
    return directory / scope if scope else directory
