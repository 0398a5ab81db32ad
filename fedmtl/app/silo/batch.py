"""The ``vectorized`` runtime's client side: a round's train messages answered together.

:class:`BatchTrainer` receives the train messages of one round with each node's context (from
:class:`fedmtl.app.runtimes.VectorizedGrid`), prepares each through the same silo toolkit as the
ClientApp (:class:`fedmtl.app.silo.Silo`: the same checks and refusals), trains every silo it can
in batched computations (:func:`fedmtl.core.vectorized.train_vectorized`) and answers each with the
same :class:`~fedmtl.core.records.TrainReply` the ClientApp would send
(:func:`strategies.engine.train_reply`), from the same silo data, round seed and received arrays
(a faulty silo's rows and reply corrupted by its fault as the ClientApp's are:
:meth:`fedmtl.app.silo.Silo.reply`).

What cannot be batched with results equal to the sequential runtime's goes to the ClientApp one
message at a time, with a warning (once per reason and run) saying why: a request the method's
silo half does not call batchable (:meth:`strategies.engine.SiloMethod.batchable`: state kept on
the silo, local balancing, affinity probes, a proximal term, ...), a model with task groups, with
dropout (each silo's masks come from the global generator in turn) or buffers, a stage of
SecAgg+ (the silo masks its own reply), and any message the toolkit refuses (the ClientApp then replies with the refusal). A batched computation that
fails leaves its messages to the ClientApp too.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context, Message

from fedmtl.app.run.experiment import cached_experiment
from fedmtl.app.runtimes import client_device
from fedmtl.app.silo.toolkit import Prepared, Silo, shared_model
from fedmtl.core.records import TrainRequest
from fedmtl.core.vectorized import Precision, SiloJob, train_vectorized, unsupported
from strategies.engine import SiloMethod, tensors, train_reply
from strategies.engine.secagg import is_secagg

log = logging.getLogger("fedmtl")


def sequential_reason(request: TrainRequest, method: SiloMethod) -> str | None:
    """Why a train request for the silo half ``method`` must be answered by the ClientApp one
    silo at a time, or None."""
    if request.groups is not None:
        return "the model has one trunk per task group"
    return method.batchable()


class BatchTrainer:
    """Answers train messages for many silos at once (module docstring); ``config_json`` is the
    run's experiment config, ``silo`` the toolkit the run's ClientApp uses."""

    def __init__(self, config_json: str, silo: Silo) -> None:
        self.config_json = config_json
        self.silo = silo
        self.explained: set[str] = set()

    def __call__(self, deliveries: list[tuple[Message, Context]]) -> list[Message | None]:
        experiment = cached_experiment(self.config_json)
        runtime = experiment.config.runtime
        max_silos = int(getattr(runtime.params, "max_silos", 0)) or len(deliveries)
        precision: Precision = getattr(runtime.params, "precision", "float32")
        device = client_device(runtime.name, runtime.params)
        replies: list[Message | None] = [None] * len(deliveries)
        model = shared_model(self.config_json, device, None)
        reason = unsupported(model)
        if reason is not None:
            self._explain(reason)
            return replies
        groups: dict[tuple[Any, ...], list[tuple[int, Prepared]]] = {}
        for i, (message, context) in enumerate(deliveries):
            if is_secagg(message):
                self._explain("SecAgg+ masks each silo's reply in its own ClientApp")
                continue
            try:
                job = self.silo.prepare_train(message, context)
            except Exception:  # the ClientApp answers with the refusal or the error
                continue
            assert isinstance(job.request, TrainRequest)
            reason = sequential_reason(job.request, job.method)
            if job.tools.dp is not None:
                reason = "DP-SGD clips each record's gradient (per-sample gradients per silo)"
            if reason is not None:
                self._explain(reason)
                continue
            request = job.request
            key = (request.train, request.update_mode, request.loss_before)
            groups.setdefault(key, []).append((i, job))
        for (train, mode, loss_before), items in groups.items():
            for start in range(0, len(items), max_silos):
                chunk = items[start : start + max_silos]
                batch = [
                    SiloJob(data=job.tools.data, seed=job.tools.seed, start=tensors(job.received))
                    for _, job in chunk
                ]
                try:
                    outcomes = train_vectorized(model, batch, train, mode, precision, loss_before)
                except Exception as err:  # the ClientApp retries each silo and reports its error
                    log.warning(
                        "vectorized runtime: batched training failed (%s: %s); %d silos train "
                        "one by one",
                        type(err).__name__,
                        err,
                        len(chunk),
                    )
                    continue
                for (i, job), outcome in zip(chunk, outcomes, strict=True):
                    assert isinstance(job.request, TrainRequest)
                    trained = {k: outcome.params[k].detach().cpu().numpy() for k in job.received}
                    reply = train_reply(
                        job.tools.data,
                        job.received,
                        trained,
                        outcome.result,
                        outcome.loss_before,
                        job.request.update_dtype,
                    )
                    message, context = deliveries[i]
                    reply = self.silo.released(self.silo.reply(job, context, reply), context)
                    replies[i] = Message(reply.to_content(), reply_to=message)
                    self.silo.trained(job, context)
        return replies

    def _explain(self, reason: str) -> None:
        """Say once per reason and run why silos train one by one."""
        if reason in self.explained:
            return
        self.explained.add(reason)
        log.warning("vectorized runtime: training silos one by one: %s", reason)
