"""The ``vectorized`` runtime's client side: a round's train messages answered together.

:class:`BatchTrainer` receives the train messages of one round with each node's context (from
:class:`fedmtl.app.runtime.VectorizedGrid`), trains every silo it can in batched computations
(:func:`fedmtl.core.vectorized.train_vectorized`) and answers each with the same
:class:`~fedmtl.core.records.TrainReply` the ClientApp would send (built by
:func:`fedmtl.app.silo.train_reply`), from the same silo data, round seed and received arrays.

What cannot be batched with results equal to the sequential runtime's goes to the ClientApp one
message at a time, with a warning (once per reason and run) saying why:

- a personal mode (``heads``, ``model``, ``ditto``: state kept on the silo, FedRep's phases);
- silo-side balancing (``local_weighting``: a balancing method over each silo's task gradients at
  every step), an affinity probe (lookahead steps), a proximal term, task groups;
- a model with dropout (each silo's masks come from the global generator in turn) or buffers.

A batched computation that fails leaves its messages to the ClientApp too (a failing client then
replies with an error as it would in-process).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import Context, Message

from fedmtl.app.client_app import (
    _check_arrays,
    _device,
    _model_for,
    _remember_round,
    _silo,
    _silo_data,
)
from fedmtl.app.experiment import cached_experiment
from fedmtl.app.silo import round_seed, train_reply
from fedmtl.app.silo_data import NodeSettings, RequestRefused, node_settings
from fedmtl.core import records
from fedmtl.core.records import TrainRequest
from fedmtl.core.vectorized import Precision, SiloJob, train_vectorized, unsupported

log = logging.getLogger("fedmtl")

PARSE_ERRORS = (KeyError, ValueError, TypeError)


def sequential_reason(request: TrainRequest) -> str | None:
    """Why a train request must be answered by the ClientApp one silo at a time, or None."""
    if request.personal != "none":
        return f"personal mode '{request.personal}' keeps state on each silo"
    if request.local_weighting is not None:
        return f"silo-side balancing ('{request.local_weighting.name}') weighs each silo's tasks"
    if request.affinity is not None:
        return f"the affinity probe ('{request.affinity.name}') takes lookahead steps"
    if request.proximal_mu > 0:
        return "a proximal term is added per silo"
    if request.head_epochs > 0:
        return "heads and trunk train in separate phases"
    if request.groups is not None:
        return "the model has one trunk per task group"
    return None


class BatchTrainer:
    """Answers train messages for many silos at once (module docstring); ``config_json`` is the
    run's experiment config, as for :func:`fedmtl.app.client_app.make_client_app`."""

    def __init__(self, config_json: str) -> None:
        self.config_json = config_json
        self.explained: set[str] = set()

    def __call__(self, deliveries: list[tuple[Message, Context]]) -> list[Message | None]:
        experiment = cached_experiment(self.config_json)
        params = experiment.config.runtime.params
        max_silos = int(getattr(params, "max_silos", 0)) or len(deliveries)
        precision: Precision = getattr(params, "precision", "float32")
        device = _device(experiment)
        replies: list[Message | None] = [None] * len(deliveries)
        model = _model_for(self.config_json, device, None)
        reason = unsupported(model)
        if reason is not None:
            self._explain(reason)
            return replies
        groups: dict[tuple[Any, ...], list[tuple[int, Any, TrainRequest, NodeSettings]]] = {}
        for i, (message, context) in enumerate(deliveries):
            try:
                received, config = records.request_parts(message.content)
                request = TrainRequest.from_config(config)
                node = node_settings(context.node_config)
                _check_arrays(model, received)
                node.limits.check(request, _silo(self.config_json, node).train.num_samples)
            except (*PARSE_ERRORS, RequestRefused):
                continue  # the ClientApp answers with the error or the refusal
            reason = sequential_reason(request)
            if reason is not None:
                self._explain(reason)
                continue
            key = (request.train, request.update_mode)
            groups.setdefault(key, []).append((i, received, request, node))
        if not groups:
            return replies
        for (train, mode), items in groups.items():
            for start in range(0, len(items), max_silos):
                chunk = items[start : start + max_silos]
                jobs = [
                    SiloJob(
                        data=_silo_data(self.config_json, node, "train", device),
                        seed=round_seed(
                            experiment.config.seed,
                            _silo(self.config_json, node).silo_id,
                            request.server_round,
                        ),
                        start={k: torch.from_numpy(v) for k, v in received.items()},
                    )
                    for _, received, request, node in chunk
                ]
                try:
                    outcomes = train_vectorized(model, jobs, train, mode, precision)
                except Exception as err:  # the ClientApp retries each silo and reports its error
                    log.warning(
                        "vectorized runtime: batched training failed (%s: %s); %d silos train "
                        "one by one",
                        type(err).__name__,
                        err,
                        len(chunk),
                    )
                    continue
                for (i, received, request, _), job, outcome in zip(
                    chunk, jobs, outcomes, strict=True
                ):
                    trained = {k: outcome.params[k].detach().cpu().numpy() for k in received}
                    reply = train_reply(
                        job.data,
                        received,
                        trained,
                        outcome.result,
                        outcome.loss_before,
                        update_dtype=request.update_dtype,
                    )
                    message, context = deliveries[i]
                    replies[i] = Message(reply.to_content(), reply_to=message)
                    _remember_round(context, request.server_round)
        return replies

    def _explain(self, reason: str) -> None:
        """Say once per reason and run why silos train one by one."""
        if reason in self.explained:
            return
        self.explained.add(reason)
        log.warning("vectorized runtime: training silos one by one: %s", reason)
