"""fedmtl: federated multi-task learning on Flower.

Silos hold different subsets of the tasks and non-IID samples; server strategies aggregate per task.
See docs/architecture.md for the data flow of one experiment.
"""

__version__ = "0.1.0"
