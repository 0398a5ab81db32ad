"""``fedavg``: task-aware FedAvg (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"), heads averaged per task over the silos that hold it.

Trunk:  Delta = sum_s w_s Delta theta_s / sum_s w_s,  w_s = n_s (the silo's training examples,
``silo_weighting: examples``) or w_s = 1 (``silo_weighting: uniform``, FMTL-Bench's unweighted
mean); the server optimizer applies Delta (plain: theta <- theta + Delta; FedAvgM, FedAdam, FedYogi
otherwise). Heads: h_t <- h_t + sum_{s holds t} n_{s,t} Delta h_{s,t} / sum_s n_{s,t}.
Silos train the received model on the sum of their tasks' losses (the engine's plain silo half).
"""

from __future__ import annotations

from strategies.engine import Averaging, AveragingParams


class FedAvg(Averaging[AveragingParams]):
    """Trunk: weighted average of the silos' trunk updates; heads: per task over holders."""
