"""The core layer: the types and loops every other part of fedmtl builds on.

It imports no plug-in (``fedmtl.datasets``, ``fedmtl.trunks``, ``partitions``, ``strategies``) and
no app module (``fedmtl.app``). Apart from the message protocol (:mod:`fedmtl.core.records`), it
does not import Flower either: the local-training core (tasks, data, models, training) runs where
only torch and numpy are installed.
"""
