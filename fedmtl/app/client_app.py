"""The Flower ClientApp: one silo's local training and evaluation on its own tasks.

Thin wiring: the silo and its rows come from the node config (:mod:`fedmtl.app.silo_data`: a
table of its own, or a silo of the run's partition for demos); the balancing method and the
affinity probe a message asks for come from the :class:`~fedmtl.app.experiment.Experiment` (built
once per process); what the silo does with a message, in each personal mode, from
:mod:`fedmtl.app.silo`; the messages from :mod:`fedmtl.core.records`. Per-node state lives in
``context.state``: the silo's personal arrays (:data:`fedmtl.app.silo.PERSONAL`), the rounds this
node has trained, and the fingerprint of the rows and tasks it announced (fixed for the run).
A silo that keeps personal arrays also saves them to files after each round it trains in, and a
resumed run restores them from there (:mod:`fedmtl.app.checkpoint`): in simulations under the
run directory, on a SuperNode in the directory its node config's ``state-dir`` names (without it,
a SuperNode keeps its state in memory only).

What the server sends is checked before any work: the experiment config (it may name no file
when it comes from the run config), the request's values against the silo's limits
(:class:`fedmtl.app.silo_data.Limits`), the received arrays against the model (known keys, their
shapes, finite values). Error replies follow one policy: a refused request says what was wrong
with what the server sent (``refused: ...``); every other failure (the node config, the silo's
files, a crash) gives the one reason :data:`UNAVAILABLE`, with the details only in the silo's own
log, so that a reply never tells the server anything about the silo's files.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmtl.app.checkpoint import restore_silo_state, save_silo_state, silo_state_dir
from fedmtl.app.config import parse
from fedmtl.app.experiment import (
    CONFIG_KEY,
    Experiment,
    adopt,
    cached_experiment,
    config_json_from,
    named_files,
)
from fedmtl.app.runtime import Shipment, client_device
from fedmtl.app.silo import SiloWorker, round_seed, run_evaluate, run_train
from fedmtl.app.silo_data import (
    NodeSettings,
    RequestRefused,
    SiloData,
    load_silo,
    node_settings,
)
from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import Arrays, EvaluateRequest, Groups, TrainRequest

NODE_STATE = "fedmtl.node"
SILO_STATE = "fedmtl.silo"
"""The node-state record holding the fingerprint of the silo's announced rows and tasks."""
RESTORED = "fedmtl.restored"
"""Node-state record set once a resumed run has restored the silo's saved state (per scope)."""
REFUSED = "refused: "
UNAVAILABLE = "silo unavailable: the reason is in the silo's own log"

log = logging.getLogger("fedmtl")

Handler = Callable[[Message, Context], Message]


@functools.lru_cache(maxsize=8)
def _shared_model(config_json: str, device: str, groups_json: str = "") -> MultiTaskModel:
    """One model object per process, device and task grouping, reused by every virtual client
    (weights are loaded from each message before use)."""
    groups = json.loads(groups_json) if groups_json else None
    return cached_experiment(config_json).new_model(groups).to(device)


def _model_for(config_json: str, device: str, groups: Groups | None) -> MultiTaskModel:
    """The shared model whose structure fits a message: one trunk, or one per task group."""
    return _shared_model(config_json, device, json.dumps(groups, sort_keys=True) if groups else "")


@functools.lru_cache(maxsize=64)
def _silo(config_json: str, node: NodeSettings) -> SiloData:
    return load_silo(cached_experiment(config_json), node)


@functools.lru_cache(maxsize=256)
def _silo_data(
    config_json: str, node: NodeSettings, split: Literal["train", "test"], device: str
) -> LocalData:
    silo = _silo(config_json, node)
    return (silo.train if split == "train" else silo.test).to(torch.device(device))


@functools.lru_cache(maxsize=8)
def _initial_arrays(config_json: str, groups_json: str) -> Arrays:
    """The seeded initial model's arrays (the server starts from the same)."""
    groups = json.loads(groups_json)
    model = cached_experiment(config_json).new_model(groups)
    return records.state_arrays(model, model.exchanged_keys())


def _device(experiment: Experiment) -> str:
    runtime = experiment.config.runtime
    return client_device(runtime.name, runtime.params)


@functools.lru_cache(maxsize=8)
def _named_files(config_json: str) -> tuple[str, ...]:
    """The files an experiment config names (parsed once per process and config: parsing on
    every message cost 3 ms, 30 s of discovery at 10,000 silos)."""
    return tuple(named_files(parse(json.loads(config_json))))


@contextmanager
def _refusing(what: str) -> Iterator[None]:
    """Turn a parse error of server-sent values into a refusal that says what was wrong."""
    try:
        yield
    except (KeyError, ValueError, TypeError) as err:  # ConfigError is a ValueError
        raise RequestRefused(f"{what}: {err}") from None


@functools.cache
def _use_cpu_share(runtime_name: str, params: Any) -> None:
    """On the simulation runtime, torch's intra-op threads in this worker process = the client's
    CPU share ``runtime.num_cpus`` (at least 1), whatever thread count the process inherited:
    clients sharing the machine's cores do not oversubscribe them (once per process)."""
    if runtime_name == "simulation":
        torch.set_num_threads(max(1, int(params.num_cpus)))


def _experiment(
    context: Context, default_config_json: str | None, shipment: Shipment | None
) -> tuple[str, Experiment]:
    """The run's experiment (``shipment``: the driver's, adopted for the default config instead
    of building it again). A config from the run config (sent by whoever started the run) may
    name no file: a silo opens only the files of its own node config."""
    with _refusing("experiment config"):
        config_json = config_json_from(context.run_config, default_config_json)
        files = _named_files(config_json)
    if files and context.run_config.get(CONFIG_KEY):
        raise RequestRefused(
            f"the experiment config names files ({', '.join(files)}); a silo opens only the "
            "files its own node config names"
        )
    if shipment is not None and config_json == default_config_json:
        adopt(config_json, shipment.get())
    with _refusing("experiment config"):
        experiment = cached_experiment(config_json)
    _use_cpu_share(experiment.config.runtime.name, experiment.config.runtime.params)
    return config_json, experiment


def _check_arrays(model: MultiTaskModel, received: Arrays) -> None:
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


def _restore(tools: SiloWorker, resume_round: int, directory: Path) -> None:
    """First message of a resumed run: the silo's state as of the checkpoint, unless this node
    still holds it in memory; files from rounds after the checkpoint are dropped."""
    saved = restore_silo_state(directory, resume_round)
    if saved is not None and tools.personal() is None:
        tools.set_personal(saved)


def _persist(tools: SiloWorker, request: TrainRequest, directory: Path) -> None:
    """After a train message: the silo's personal arrays (if it keeps any) to its state files."""
    personal = tools.personal()
    if personal is not None:
        save_silo_state(directory, request.server_round, personal, request.checkpoint.saved_round)


def _answer(handler: Handler) -> Handler:
    """The module docstring's error policy around a message handler."""

    @functools.wraps(handler)
    def answer(msg: Message, context: Context) -> Message:
        kind = msg.metadata.message_type
        try:
            return handler(msg, context)
        except RequestRefused as err:
            log.warning("refused a %s message: %s", kind, err)
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{REFUSED}{err}"), reply_to=msg
            )
        except Exception:  # the details stay in this silo's log
            log.exception("this silo could not answer a %s message", kind)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, UNAVAILABLE), reply_to=msg)

    return answer


def make_client_app(
    default_config_json: str | None = None, shipment: Shipment | None = None
) -> ClientApp:
    """The ClientApp; the experiment config comes from the run config, else ``default_config_json``.
    ``shipment``: the driver's experiment for that config, adopted instead of building it again
    (:class:`fedmtl.app.runtime.Shipment`)."""
    app = ClientApp()

    def setup(context: Context) -> tuple[str, Experiment, NodeSettings, SiloData, str]:
        config_json, experiment = _experiment(context, default_config_json, shipment)
        node = node_settings(context.node_config)
        if node.unknown:
            log.warning("node config keys %s are not fedmtl's; ignored", list(node.unknown))
        silo = _silo(config_json, node)
        _fix_for_run(context, silo)
        return config_json, experiment, node, silo, _device(experiment)

    def worker(
        context: Context,
        request: TrainRequest | EvaluateRequest,
        received: Arrays,
        split: Literal["train", "test"],
    ) -> tuple[Experiment, NodeSettings, SiloWorker, Path | None]:
        """The silo's tools for one message (after checking what the server sent): the shared
        model of the message's structure, the silo's rows of ``split``, its node state and its
        round seed; and where it saves its state (restored from there in a resumed run)."""
        config_json, experiment, node, silo, device = setup(context)
        groups = request.groups
        with _refusing("task groups"):
            model = _model_for(config_json, device, groups)
        _check_arrays(model, received)
        tools = SiloWorker(
            model=model,
            data=_silo_data(config_json, node, split, device),
            state=context.state,
            initial=lambda: _initial_arrays(config_json, json.dumps(groups, sort_keys=True)),
            seed=round_seed(experiment.config.seed, silo.silo_id, request.server_round),
            device=device,
            scope=request.scope,
        )
        directory = _state_dir(context, experiment, node, silo.silo_id, request.scope)
        resume = request.checkpoint.resume_round
        restored = f"{RESTORED}/{request.scope}" if request.scope else RESTORED
        if directory and resume and restored not in context.state.config_records:
            context.state.config_records[restored] = ConfigRecord({"resume-round": resume})
            _restore(tools, resume, directory)
        return experiment, node, tools, directory

    @app.query()
    @_answer
    def query(msg: Message, context: Context) -> Message:
        _, _, _, silo, _ = setup(context)
        return Message(silo.info.to_content(), reply_to=msg)

    @app.train()
    @_answer
    def train(msg: Message, context: Context) -> Message:
        with _refusing("train request"):
            received, config = records.request_parts(msg.content)
            request = TrainRequest.from_config(config)
        experiment, node, tools, directory = worker(context, request, received, "train")
        node.limits.check(request, tools.data.num_samples)
        step_weights = None
        probe = None
        with _refusing("train request"):
            if request.local_weighting is not None:
                step_weights = Experiment.step_weights(request.local_weighting, tools.seed)
            if request.affinity is not None:
                probe = experiment.affinity_probe(request.affinity, tools.model, tools.data)
        reply = run_train(tools, received, request, step_weights, probe)
        _remember_round(context, request.server_round)
        if directory is not None:
            _persist(tools, request, directory)
        return Message(reply.to_content(), reply_to=msg)

    @app.evaluate()
    @_answer
    def evaluate_(msg: Message, context: Context) -> Message:
        with _refusing("evaluate request"):
            received, config = records.request_parts(msg.content)
            request = EvaluateRequest.from_config(config)
        _, _, tools, _ = worker(context, request, received, "test")
        return Message(run_evaluate(tools, received, request).to_content(), reply_to=msg)

    return app


def _remember_round(context: Context, server_round: int) -> None:
    """Per-node state: how many rounds this node trained, and the last one."""
    state = context.state.config_records.get(NODE_STATE) or ConfigRecord({"rounds-trained": 0})
    state["rounds-trained"] = records.integer(state, "rounds-trained") + 1
    state["last-round"] = server_round
    context.state.config_records[NODE_STATE] = state


app = make_client_app()
"""The ClientApp for deployment (``flwr run``): the config comes from the run config."""
