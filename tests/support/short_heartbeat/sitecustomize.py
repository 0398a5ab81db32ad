"""On the ``PYTHONPATH`` of a test deployment's processes: Flower's heartbeat interval at its
smallest allowed value (``HEARTBEAT_MIN_INTERVAL``, 10 s) instead of 30 s. A SuperNode announces
its interval when it activates and sends heartbeats at that pace; the SuperLink declares it gone
after ``HEARTBEAT_PATIENCE`` (2) intervals without one: about 20 s after a kill -9 instead of
about 60 s. Flower's SuperNode has no option for it, and both read the constant when their modules
are imported, which is after this module runs (Python imports ``sitecustomize`` at start-up)."""

from flwr.common import constant

constant.HEARTBEAT_DEFAULT_INTERVAL = constant.HEARTBEAT_MIN_INTERVAL
