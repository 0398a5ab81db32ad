"""The Flower ClientApp: one silo answering the server's messages through its method's silo half.

Thin wiring around the silo toolkit (:class:`fedmtl.app.silo.Silo`): a message is checked and
prepared there, then the method's silo half (:class:`strategies.engine.SiloMethod`) trains or
evaluates. Error replies follow one policy: a refused request says what was wrong with what the
server sent (``refused: ...``); every other failure (the node config, the silo's files, a crash)
gives the one reason :data:`UNAVAILABLE`, with the details only in the silo's own log, so that a
reply never tells the server anything about the silo's files.

Under SecAgg+ (``privacy=secagg``) a train message is one of the protocol's stages; the silo
answers it through :func:`strategies.engine.secagg.silo_stage`, which trains at stage 2 and sends
the reply masked.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmtl.app.runtimes import Shipment
from fedmtl.app.silo.node import RequestRefused
from fedmtl.app.silo.toolkit import Silo
from fedmtl.core.records import EvaluateRequest, TrainReply, TrainRequest
from strategies.engine.secagg import is_secagg, silo_stage

REFUSED = "refused: "
UNAVAILABLE = "silo unavailable: the reason is in the silo's own log"

log = logging.getLogger("fedmtl")

Handler = Callable[[Message, Context], Message]


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
    (:class:`fedmtl.app.runtimes.Shipment`)."""
    app = ClientApp()
    silo = Silo(default_config_json, shipment)

    @app.query()
    @_answer
    def query(msg: Message, context: Context) -> Message:
        return Message(silo.query(context), reply_to=msg)

    def trained(msg: Message, context: Context) -> TrainReply:
        job = silo.prepare_train(msg, context)
        assert isinstance(job.request, TrainRequest)
        reply = silo.reply(job, context, job.method.train(job.tools, job.received, job.request))
        silo.trained(job, context)
        return silo.released(reply, context)

    @app.train()
    @_answer
    def train(msg: Message, context: Context) -> Message:
        if is_secagg(msg):  # a stage of SecAgg+: the reply is masked (strategies.engine.secagg)
            return silo_stage(msg, context, trained, silo.seed(context))
        return Message(trained(msg, context).to_content(), reply_to=msg)

    @app.evaluate()
    @_answer
    def evaluate_(msg: Message, context: Context) -> Message:
        job = silo.prepare_evaluate(msg, context)
        assert isinstance(job.request, EvaluateRequest)
        reply = job.method.evaluate(job.tools, job.received, job.request)
        return Message(reply.to_content(), reply_to=msg)

    return app


app = make_client_app()
"""The ClientApp for deployment (``flwr run``): the config comes from the run config."""
