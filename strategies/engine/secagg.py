"""SecAgg+ over task-aware sums: both halves of the protocol, on Flower's implementation.

SecAgg+ (Bell et al., CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") lets the server learn the sum of the silos' integer vectors and nothing else, and
survive silos dropping out. A round runs Flower's four stages (the messages of
``flwr.server.workflow.SecAggPlusWorkflow``, the silo's steps of ``flwr.client.mod.secaggplus_mod``):

0. **setup**: each sampled silo makes two key pairs (``secaggplus_mod``'s ``_setup``);
1. **share keys**: the server forwards each silo its neighbours' public keys; each silo splits
   its private mask seed b_s and its first secret key among them (Shamir, threshold t) and sends
   the shares encrypted for each neighbour (``_share_keys``);
2. **collect masked vectors**: with the round's train request, the server forwards each silo the
   shares meant for it; the silo trains, lays its reply out in the round's task-aware slots
   (:mod:`strategies.engine.sums`), weights, quantizes, and sends
   y_s = q_s + PRG(b_s) + sum_{r < s} PRG(k_{s,r}) - sum_{r > s} PRG(k_{s,r})  (mod M)
   where k_{s,r} is the key s agrees with neighbour r (Flower's ``pseudo_rand_gen`` and
   ``generate_shared_key``);
3. **unmask**: the server asks the survivors for the shares of each survivor's b_s and of each
   dropped silo's secret key (``_unmask``), rebuilds them (``combine_shares``) and removes the
   masks: sum_s y_s - sum_s PRG(b_s) +- the dropped silos' pairwise masks = sum_s q_s (mod M).

Flower's workflow and mod fit one weighted model vector (one weight per silo, the legacy
``FitRes``); the task-aware reply needs a weight per slot and exact counts, so stage 2 is ours
(:func:`masked_reply`) and the rest is Flower's code, called as is.

**Quantization.** A weighted value v in [-c, c] becomes q = stochastic_round((v + c) R / (2c))
in [0, R] (Flower's mapping; our rounding draws from a seeded generator, not numpy's global one),
counts travel as exact integers beside them, and the server reads S = sum_s q_s 2c / R - K c for
K survivors. Each rounding errs by less than delta = 2c / R, so a slot's mean (scale w_max S / W)
errs by less than

    K delta scale w_max / W                (for K silos of n examples each under FedAvg: delta)

per value per round; values beyond [-c, c] are clipped, and their number is summed in the clear
(``overflow``) and logged. M = 2^modulus_bits must exceed K R (checked before the run).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _setup,
    _share_keys,
    _unmask,
    check_configs,
    check_stage,
)
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedmtl.core import records
from fedmtl.core.records import (
    SECAGG_DP_BIT_NOISE as DP_BIT_NOISE,
)
from fedmtl.core.records import (
    SECAGG_DP_CLIP as DP_CLIP,
)
from fedmtl.core.records import (
    SECAGG_DP_NOISE as DP_NOISE,
)
from fedmtl.core.records import (
    SECAGG_DP_PER_TASK as DP_PER_TASK,
)
from fedmtl.core.records import (
    SECAGG_LAYOUT as LAYOUT,
)
from fedmtl.core.records import (
    SECAGG_MASKED as MASKED,
)
from fedmtl.core.records import (
    SECAGG_ROUND as SEED,
)
from fedmtl.core.records import (
    TrainReply,
)
from strategies.engine.dispatch import answered_node, answered_nodes
from strategies.engine.privacy import PrivacyParams
from strategies.engine.sums import (
    Contribution,
    Layout,
    add_noise,
    clip_contribution,
    gather,
    weighted,
)

log = logging.getLogger("fedmtl")


def is_secagg(message: Message) -> bool:
    """Whether ``message`` is a stage of SecAgg+ (for the silo's train handler)."""
    return message.has_content() and RECORD_KEY_CONFIGS in message.content.config_records


# ---------------------------------------------------------------------------------- quantization
def quantize(
    values: np.ndarray, clipping_range: float, target_range: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Flower's quantization of ``values`` to integers in [0, R] with stochastic rounding drawn
    from ``rng``, and how many values lay outside [-c, c] (clipped)."""
    outside = int(np.count_nonzero(np.abs(values) > clipping_range))
    scaled = (np.clip(values, -clipping_range, clipping_range) + clipping_range) * (
        target_range / (2 * clipping_range)
    )
    floor = np.floor(scaled)
    up = rng.random(scaled.shape) < (scaled - floor)
    return (floor + up).astype(np.int64), outside


def dequantize_sum(
    total: np.ndarray, clipping_range: float, target_range: int, contributors: int
) -> np.ndarray:
    """S = sum_s q_s 2c / R - K c from the sum of K silos' quantized values (Flower's
    ``dequantize`` and its workflow's offset)."""
    (values,) = dequantize([total], clipping_range, target_range)
    return np.asarray(values, dtype=np.float64) - (contributors - 1) * clipping_range


def error_bound(
    privacy: PrivacyParams, contributors: int, scale: float, max_weight: float, weight: float
) -> float:
    """The bound on a slot mean's quantization error (module docstring)."""
    return contributors * privacy.quantization_step() * scale * max_weight / weight


# ---------------------------------------------------------------------------------- the silo
def _masks(state: SecAggPlusState, size: int, sources: Sequence[int]) -> np.ndarray:
    """PRG(b_s) + sum_{r < s} PRG(k_{s,r}) - sum_{r > s} PRG(k_{s,r}) over the neighbours that
    sent this silo their shares (as in ``secaggplus_mod``)."""
    shape: list[tuple[int, ...]] = [(size,)]
    mask = pseudo_rand_gen(state.rd_seed, state.mod_range, shape)[0]
    for node in sources:
        key = generate_shared_key(
            bytes_to_private_key(state.sk1), bytes_to_public_key(state.public_keys_dict[node][0])
        )
        pairwise = pseudo_rand_gen(key, state.mod_range, shape)[0]
        mask = mask + pairwise if state.nid > node else mask - pairwise
    return cast(np.ndarray, mask)


def _receive_shares(state: SecAggPlusState, configs: ConfigRecord) -> list[int]:
    """Decrypt and keep the key shares the neighbours sent (``secaggplus_mod``'s stage 2)."""
    ciphertexts = cast(list[bytes], configs[Key.CIPHERTEXT_LIST])
    sources = cast(list[int], configs[Key.SOURCE_LIST])
    if len(ciphertexts) + 1 < state.threshold:
        raise ValueError("Not enough available neighbour clients.")
    for source, ciphertext in zip(sources, ciphertexts, strict=True):
        plaintext = decrypt(state.ss2_dict[source], ciphertext)
        actual, destination, seed_share, key_share = share_keys_plaintext_separate(plaintext)
        if actual != source or destination != state.nid:
            raise ValueError(
                f"node {state.nid}: a share from {actual} to {destination} came as {source}"
            )
        state.rd_seed_share_dict[source] = seed_share
        state.sk1_share_dict[source] = key_share
    return sources


def contribution_of(
    layout: Layout, reply: TrainReply, extra: Mapping[str, Any], noise: np.random.Generator
) -> np.ndarray:
    """The silo's weighted values: clipped and with its share of the DP noise when the round
    asks for it (``extra``: stage 2's ``fedmtl-dp-*`` keys)."""
    for name, array in [
        *reply.deltas.items(),
        *((k, v) for shares in (reply.task_deltas or {}).values() for k, v in shares.items()),
    ]:
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: non-finite values; this silo sends no update")
    contribution: Contribution = gather(
        layout,
        reply.deltas,
        reply.task_deltas,
        reply.task_examples,
        reply.num_examples,
        (reply.loss_before, reply.train_loss),
        reply.method_metrics,
    )
    clip = extra.get(DP_CLIP)
    if clip is not None:
        contribution = clip_contribution(
            layout, contribution, float(cast(float, clip)), bool(extra.get(DP_PER_TASK, False))
        )
    values = weighted(layout, contribution)
    if clip is not None:
        noise_std = float(cast(float, extra.get(DP_NOISE, 0.0)))
        bit_std = float(cast(float, extra.get(DP_BIT_NOISE, 0.0)))
        add_noise(layout, values, noise_std, bit_std, noise)
    return values


def masked_reply(
    state: SecAggPlusState,
    configs: ConfigRecord,
    extra: Mapping[str, Any],
    reply: TrainReply,
    rounding: np.random.Generator,
    noise: np.random.Generator,
) -> tuple[dict[str, Any], ArrayRecord]:
    """Stage 2 on the silo (module docstring): y_s, masked, as an array record."""
    sources = _receive_shares(state, configs)
    layout = Layout.from_json(str(extra[LAYOUT]))
    values = contribution_of(layout, reply, extra, noise)
    quantized, outside = quantize(values, state.clipping_range, state.target_range, rounding)
    vector = np.concatenate([quantized, reply_counts(layout, reply), [outside]]).astype(np.int64)
    masked = np.mod(vector + _masks(state, vector.size, sources), state.mod_range)
    dtype = np.uint32 if state.mod_range <= 2**32 else np.int64
    return {}, records.to_array_record({"masked": masked.astype(dtype)})


def reply_counts(layout: Layout, reply: TrainReply) -> np.ndarray:
    """The silo's counts in the layout's order."""
    return gather(layout, {}, None, reply.task_examples, reply.num_examples).counts


Train = Callable[[Message, Context], TrainReply]


def silo_stage(
    message: Message,
    context: Context,
    train: Train,
    seed: int,
    noise: np.random.Generator | None = None,
) -> Message:
    """Answer one SecAgg+ stage of the server (module docstring); ``train`` answers the round's
    train request at stage 2, ``seed`` seeds the rounding, ``noise`` draws the DP noise (default:
    fresh OS entropy)."""
    if RECORD_KEY_STATE not in context.state.config_records:
        context.state.config_records[RECORD_KEY_STATE] = ConfigRecord({})
    state = SecAggPlusState(**context.state.config_records[RECORD_KEY_STATE])
    configs = ConfigRecord(dict(message.content.config_records[RECORD_KEY_CONFIGS]))
    check_stage(state.current_stage, configs)
    state.current_stage = cast(str, configs.pop(Key.STAGE))
    extra = {k: configs.pop(k) for k in list(configs) if k.startswith("fedmtl-")}
    check_configs(state.current_stage, configs)
    content = RecordDict()
    if state.current_stage == Stage.SETUP:
        state.nid = message.metadata.dst_node_id
        result = _setup(state, configs)
    elif state.current_stage == Stage.SHARE_KEYS:
        result = _share_keys(state, configs)
    elif state.current_stage == Stage.COLLECT_MASKED_VECTORS:
        reply = train(message, context)
        rounding = np.random.default_rng([seed, state.nid % 2**32, int(cast(int, extra[SEED]))])
        result, masked = masked_reply(
            state, configs, extra, reply, rounding, noise or np.random.default_rng()
        )
        content[MASKED] = masked
    else:
        result = _unmask(state, configs)
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(result, False)
    return Message(content, reply_to=message)


# ---------------------------------------------------------------------------------- the server
def config_bytes(record: ConfigRecord) -> int:
    """The bytes of a config record's values (Flower's ``count_bytes`` fails on an empty list):
    bytes and strings by length, numbers 8 bytes each."""
    total = 0
    for value in record.values():
        items = value if isinstance(value, list) else [value]
        total += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return total


class SecAggFailed(RuntimeError):
    """Fewer silos than the threshold went through a stage: the round cannot be unmasked."""


@dataclass
class SecAggRound:
    """The server's side of one round (module docstring) over the nodes of ``train``'s messages.

    ``exchange`` sends messages and returns the replies that came; ``dropped`` collects, for
    each silo lost on the way, its node and the stage."""

    privacy: PrivacyParams
    layout: Layout
    exchange: Callable[[list[Message]], list[Message]]
    server_round: int
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    overflow: int = 0

    def run(self, train: list[Message]) -> tuple[np.ndarray, dict[str, int], list[int]]:
        """The summed values S (dequantized), the summed counts and the surviving nodes."""
        nodes = [m.metadata.dst_node_id for m in train]
        setup = self._setup(nodes)
        keys = self._stage(Stage.SETUP, {n: dict(setup) for n in nodes})
        public = {
            n: [cast(bytes, r[Key.PUBLIC_KEY_1]), cast(bytes, r[Key.PUBLIC_KEY_2])]
            for n, r in keys.items()
        }
        self._public = {n: keys[0] for n, keys in public.items()}
        shares = self._stage(
            Stage.SHARE_KEYS,
            {n: {str(m): public[m] for m in self.neighbours[n] if m in public} for n in public},
        )
        forward: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in shares}
        for source, reply in shares.items():
            for dst, text in zip(
                cast(list[int], reply[Key.DESTINATION_LIST]),
                cast(list[bytes], reply[Key.CIPHERTEXT_LIST]),
                strict=True,
            ):
                if dst in forward:
                    forward[dst][0].append(source)
                    forward[dst][1].append(text)
        messages = {m.metadata.dst_node_id: m for m in train}
        collect = {
            n: {
                Key.CIPHERTEXT_LIST: forward[n][1],
                Key.SOURCE_LIST: forward[n][0],
                LAYOUT: self.layout.to_json(),
                SEED: self.server_round,
                **self.extra,
            }
            for n in forward
        }
        masked = self._stage(Stage.COLLECT_MASKED_VECTORS, collect, messages)
        survivors = sorted(masked)
        total = np.zeros(self.layout.size + len(self.layout.counts) + 1, dtype=np.int64)
        for node in survivors:
            total = np.mod(total + self.vectors[node], self.mod_range)
        dead = set(shares) - set(survivors)  # masked into the survivors' vectors: shares sent
        unmask = self._stage(
            Stage.UNMASK,
            {
                n: {
                    Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[n] & set(survivors)),
                    Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[n] & dead),
                }
                for n in survivors
            },
        )
        total = self._unmask(total, unmask, survivors, dead)
        size = self.layout.size
        values = dequantize_sum(
            total[:size], self.privacy.clipping_range, self.target_range, len(survivors)
        )
        counts = dict(zip(self.layout.counts, total[size:-1].tolist(), strict=True))
        self.overflow = int(total[-1])
        return values, counts, survivors

    # the stages
    def _setup(self, nodes: list[int]) -> dict[str, Any]:
        count = len(nodes)
        if count < 2:
            raise SecAggFailed("SecAgg+ needs at least 2 silos in a round")
        shares = round(self.privacy.num_shares * count)
        if shares < count and shares % 2 == 0:
            shares += 1
        shares = count if shares <= 2 else shares
        self.threshold = max(round(self.privacy.threshold * shares), 2)
        self.target_range = 2**self.privacy.quantization_bits
        self.mod_range = 2**self.privacy.modulus_bits
        order = sorted(nodes)
        random.Random(f"{self.seed}/{self.server_round}").shuffle(order)  # public, seeded
        half = shares >> 1
        self.neighbours: dict[int, set[int]] = {
            node: {order[(i + k) % count] for k in range(-half, half + 1)}
            for i, node in enumerate(order)
        }
        self.vectors: dict[int, np.ndarray] = {}
        return {
            Key.SAMPLE_NUMBER: count,
            Key.SHARE_NUMBER: shares,
            Key.THRESHOLD: self.threshold,
            Key.CLIPPING_RANGE: float(self.privacy.clipping_range),
            Key.TARGET_RANGE: self.target_range,
            Key.MOD_RANGE: self.mod_range,
            Key.MAX_WEIGHT: float(self.layout.max_weight),
        }

    def _stage(
        self,
        stage: str,
        configs: Mapping[int, Mapping[str, Any]],
        base: Mapping[int, Message] | None = None,
    ) -> dict[int, ConfigRecord]:
        """Send stage ``stage`` to the nodes of ``configs`` (on their train messages ``base``)
        and return each answering node's config; too few answers raise :class:`SecAggFailed`."""
        messages = []
        for node, values in configs.items():
            record = ConfigRecord({Key.STAGE: stage, **values})
            if base is not None:
                message = base[node]
                message.content.config_records[RECORD_KEY_CONFIGS] = record
            else:
                message = Message(
                    RecordDict({RECORD_KEY_CONFIGS: record}),
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(self.server_round),
                )
            self.bytes_down += config_bytes(record)
            messages.append(message)
        answers: dict[int, ConfigRecord] = {}
        replies = self.exchange(messages)
        destinations = answered_nodes(messages)
        for reply in replies:
            node = answered_node(reply, destinations)
            if node not in configs:
                continue
            if reply.has_error():
                self.dropped.append((node, f"SecAgg+ {stage}: {reply.error.reason}"))
                continue
            content = reply.content
            self.bytes_up += sum(r.count_bytes() for r in content.array_records.values())
            self.bytes_up += config_bytes(content.config_records[RECORD_KEY_CONFIGS])
            answers[node] = content.config_records[RECORD_KEY_CONFIGS]
            if stage == Stage.COLLECT_MASKED_VECTORS:
                vector = records.from_array_record(content.array_records[MASKED])["masked"]
                expected = self.layout.size + len(self.layout.counts) + 1
                if vector.shape != (expected,):
                    self.dropped.append((node, f"masked vector of shape {vector.shape}"))
                    del answers[node]
                    continue
                self.vectors[node] = vector.astype(np.int64)
        missing = set(configs) - set(answers) - {n for n, _ in self.dropped}
        self.dropped += [(n, f"SecAgg+ {stage}: no reply") for n in sorted(missing)]
        if len(answers) < self.threshold:
            raise SecAggFailed(
                f"SecAgg+ {stage}: {len(answers)} silos answered, fewer than the threshold "
                f"{self.threshold}"
            )
        return answers

    def _unmask(
        self,
        total: np.ndarray,
        replies: Mapping[int, ConfigRecord],
        survivors: list[int],
        dead: set[int],
    ) -> np.ndarray:
        """Remove every survivor's private mask and every dropped silo's pairwise masks."""
        collected: dict[int, list[bytes]] = {n: [] for n in [*survivors, *dead]}
        for reply in replies.values():
            for owner, share in zip(
                cast(list[int], reply[Key.NODE_ID_LIST]),
                cast(list[bytes], reply[Key.SHARE_LIST]),
                strict=True,
            ):
                if owner in collected:
                    collected[owner].append(share)
        shape: list[tuple[int, ...]] = [(total.size,)]
        for node, shares in collected.items():
            if len(shares) < self.threshold:
                raise SecAggFailed(
                    f"SecAgg+ unmask: too few shares to recover node {node}'s secret"
                )
            secret = combine_shares(shares)
            if node in survivors:
                total = total - pseudo_rand_gen(secret, self.mod_range, shape)[0]
                continue
            for neighbour in (self.neighbours[node] - {node}) & set(survivors):
                key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(self._public[neighbour])
                )
                pairwise = pseudo_rand_gen(key, self.mod_range, shape)[0]
                total = total + pairwise if node > neighbour else total - pairwise
        return cast(np.ndarray, np.mod(total, self.mod_range))
