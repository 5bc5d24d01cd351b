"""GRPO: group-relative advantages, the clipped policy loss with a KL penalty
to a frozen reference model, and the jitted multi-epoch update.

Conventions (``R`` thread rows of ``L`` tokens, ``N`` rollouts, ``P`` groups):
- a *group* is the G rollouts of one prompt; a rollout's advantage is its
  reward minus its group's mean, divided by the group's std for ``"grpo"``
  (DeepSeekMath) and not for ``"drgrpo"`` (Dr. GRPO's mean-centring, which
  does not favour groups with a small reward spread); a group whose rewards
  are all equal gets 0, never NaN. Only the advantage differs between the
  two: the loss keeps its per-rollout token mean below;
- every token of a rollout carries that rollout's advantage;
- ``logp_RxL[:, j]`` is the log-probability of token ``j`` given the tokens
  before it in its thread (0 at a thread's first token); the loss counts only
  model-written tokens;
- the loss is averaged over each rollout's model-written tokens (all its
  threads together), then over the rollouts that wrote any token;
- log-ratios are zeroed outside the model-written tokens before any
  exponential, so whatever the log-probs hold at prompts, joins and padding
  (old, reference or current) the loss and its gradient stay finite;
- the update trains either on the rollout's rows as they are (one thread per
  ``max_len`` row, ``UpdateBatch``) or on the threads packed into rows with
  segment ids and per-thread positions (``PackedUpdateBatch`` from
  ``apr_jax.rl.pack``; ``config.rl.packed_update``); both give the same
  result, the packed one with far fewer padding tokens through the forwards.
  In the inherit family each rollout is one tree sequence
  (``apr_jax.rl.tree_pack``) and the forward applies its tree mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from apr_jax.rl.pack import PackedUpdateBatch
from apr_jax.rl.rollout import RolloutBatch
from apr_jax.training.optim import Schedule
from apr_jax.training.train_state import Graphs, TrainState
from apr_jax.training.train_step import attention_keys
from apr_jax.training.update import apply_gradients, summed_gradients


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    clip_low: float = 0.2  # ratio lower bound 1 - clip_low
    clip_high: float = 0.2  # ratio upper bound 1 + clip_high
    kl_coef: float = 0.001  # weight of the k3 KL estimate to the reference model
    advantage: str = "grpo"  # one of ADVANTAGES
    inner_epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer updates per pass (whole rollouts per minibatch)
    microbatches: int = 1  # gradient-accumulation chunks per minibatch (rows)
    temperature: float = 1.0  # the sampling temperature; log-probs are of logits / temperature
    old_logprobs: str = "sampling"  # one of OLD_LOGPROBS: the ratio's denominator

    def __post_init__(self):
        if not (self.clip_low >= 0 and self.clip_high >= 0):
            raise ValueError(f"clip_low/clip_high must be >= 0, got {self.clip_low}, {self.clip_high}")
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        for name in ("inner_epochs", "minibatches", "microbatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"RL needs a sampling temperature > 0, got {self.temperature}")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage {self.advantage!r} is not one of {', '.join(ADVANTAGES)}")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs {self.old_logprobs!r} is not one of {', '.join(OLD_LOGPROBS)}")


# The ratio's old log-probs: the engine's at sampling time, or the update
# forward's on the sampling parameters before the first step ("recompute":
# the ratio starts at exactly 1 whatever the two paths' numerics; the
# engine's log-probs then only measure the gap, ``logp_gap_mean``/``_max``).
OLD_LOGPROBS = ("sampling", "recompute")


# ---- advantages ------------------------------------------------------------------
ADVANTAGES = ("grpo", "drgrpo")  # std-normalised, mean-centred


def group_advantages(rewards_PxG: jax.Array, advantage: str = "grpo", eps: float = 1e-6) -> jax.Array:
    """Reward minus the group mean (over G samples of a prompt), over the
    group std for ``"grpo"``; equal rewards give exactly 0."""
    if advantage not in ADVANTAGES:
        raise ValueError(f"advantage {advantage!r} is not one of {', '.join(ADVANTAGES)}")
    rewards_PxG = jnp.asarray(rewards_PxG, jnp.float32)
    centered = rewards_PxG - rewards_PxG.mean(axis=1, keepdims=True)
    if advantage == "grpo":
        std = jnp.sqrt(jnp.mean(centered**2, axis=1, keepdims=True))
        centered = jnp.where(std > eps, centered / jnp.maximum(std, eps), 0.0)
    return centered


def groups_with_signal(rewards_PxG: np.ndarray) -> np.ndarray:
    """bool [P]: the groups whose samples did not all get the same reward
    (the others have zero advantage everywhere)."""
    rewards_PxG = np.asarray(rewards_PxG)
    return rewards_PxG.max(axis=1) > rewards_PxG.min(axis=1)


def rollout_token_weights(mask_RxL: jax.Array, rollout_RxL: jax.Array, num_rollouts: int) -> jax.Array:
    """Per-token weights making ``sum(w * x)`` the mean over rollouts (that
    wrote any token) of each rollout's mean over its model-written tokens.
    ``rollout_RxL`` (each token's rollout) may be ``[R, 1]``: one rollout per row."""
    if jnp.ndim(rollout_RxL) != 2:
        raise ValueError(f"rollout ids must be [R, L] or [R, 1], got shape {jnp.shape(rollout_RxL)}")
    rollout_RxL = jnp.broadcast_to(rollout_RxL, mask_RxL.shape)
    tokens_N = jax.ops.segment_sum(mask_RxL.reshape(-1), rollout_RxL.reshape(-1), num_segments=num_rollouts)
    counted = jnp.maximum((tokens_N > 0).sum(), 1)
    tokens_RxL = tokens_N[rollout_RxL]
    per_token_RxL = jnp.where(tokens_RxL > 0, 1.0 / jnp.maximum(tokens_RxL, 1), 0.0)
    return mask_RxL * per_token_RxL / counted


# ---- log-probs and loss ------------------------------------------------------------
def target_logprobs(logits_RxLxV: jax.Array, tokens_RxL: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``out[:, j]`` = log p(tokens[:, j] | tokens[:, :j]) from the logits at
    ``j - 1`` scaled by 1 / temperature; column 0 is 0."""
    logp_RxLxV = jax.nn.log_softmax(logits_RxLxV[:, :-1].astype(jnp.float32) / temperature, axis=-1)
    picked = jnp.take_along_axis(logp_RxLxV, tokens_RxL[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(picked, ((0, 0), (1, 0)))


def grpo_token_terms(
    logp_RxL: jax.Array,
    old_logp_RxL: jax.Array,
    ref_logp_RxL: jax.Array | None,
    adv_RxL: jax.Array,
    mask_RxL: jax.Array,
    cfg: GrpoConfig,
) -> dict[str, jax.Array]:
    """Per-token clipped policy loss, k3 KL estimate, clip indicator and
    ratio; outside ``mask_RxL`` the log-ratios are 0 (ratio 1, KL 0).
    ``adv_RxL`` is each token's advantage (``[R, 1]``: one per row)."""
    if jnp.ndim(adv_RxL) != 2:
        raise ValueError(f"advantages must be [R, L] or [R, 1], got shape {jnp.shape(adv_RxL)}")
    counted = mask_RxL > 0
    ratio = jnp.exp(jnp.where(counted, logp_RxL - old_logp_RxL, 0.0))
    adv = adv_RxL
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    policy = -jnp.minimum(ratio * adv, clipped * adv)
    clip_active = ((adv > 0) & (ratio > 1.0 + cfg.clip_high)) | ((adv < 0) & (ratio < 1.0 - cfg.clip_low))
    if ref_logp_RxL is None:
        kl = jnp.zeros_like(logp_RxL)
    else:
        log_r = jnp.where(counted, ref_logp_RxL - logp_RxL, 0.0)
        kl = jnp.exp(log_r) - log_r - 1.0
    return {
        "loss": policy + cfg.kl_coef * kl,
        "policy_loss": policy,
        "kl": kl,
        "clip_fraction": clip_active.astype(jnp.float32),
        "ratio": ratio,
    }


def grpo_loss(
    logp_RxL, old_logp_RxL, ref_logp_RxL, adv_RxL, weights_RxL, cfg: GrpoConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss, its weighted per-token statistics and the largest
    ratio (``ratio_max``) over the counted tokens (``weights_RxL > 0``)."""
    terms = grpo_token_terms(logp_RxL, old_logp_RxL, ref_logp_RxL, adv_RxL, weights_RxL, cfg)
    ratio = terms.pop("ratio")
    stats = {k: (v * weights_RxL).sum() for k, v in terms.items()}
    stats["ratio_mean"] = (ratio * weights_RxL).sum()
    stats["ratio_max"] = jax.lax.stop_gradient(jnp.where(weights_RxL > 0, ratio, 0.0).max())
    return stats["loss"], stats


# ---- the update ---------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UpdateBatch:
    """What the update needs from a rollout plus the per-rollout advantages."""

    tokens_RxL: jax.Array
    positions_RxL: jax.Array
    segment_ids_RxL: jax.Array
    mask_RxL: jax.Array  # float32 model-written tokens of valid rows
    old_logp_RxL: jax.Array
    valid_R: jax.Array
    rollout_R: jax.Array
    adv_N: jax.Array  # float32 [N]

    @classmethod
    def from_rollout(cls, batch: RolloutBatch, adv_N: jax.Array, keep_N: jax.Array | None = None) -> "UpdateBatch":
        """``keep_N`` (bool [N], optional) drops whole rollouts from the update:
        their rows become invalid, so they carry no loss, no KL and no weight
        in the per-rollout mean, and all-dropped microbatches are skipped."""
        valid_R, mask_RxL = batch.valid_R, batch.model_mask_RxL
        if keep_N is not None:
            valid_R = valid_R & jnp.asarray(keep_N, bool)[batch.rollout_R]
            mask_RxL = mask_RxL * valid_R[:, None]
        return cls(
            batch.tokens_RxL,
            batch.positions_RxL,
            batch.segment_ids_RxL,
            mask_RxL,
            batch.logp_RxL,
            valid_R,
            batch.rollout_R,
            jnp.asarray(adv_N, jnp.float32),
        )


def _minibatch_order(valid_R: jax.Array, rollout_R: jax.Array, num_rollouts: int, minibatches: int) -> jax.Array:
    """Row order grouping whole rollouts into minibatches and, inside each,
    putting valid rows first so all-padding microbatches can be skipped."""
    mb_R = rollout_R // (num_rollouts // minibatches)
    return jnp.argsort(mb_R * 2 + (~valid_R).astype(jnp.int32), stable=True)


def _update_rows(batch: UpdateBatch | PackedUpdateBatch, num_rollouts: int, minibatches: int) -> dict[str, jax.Array]:
    """The rows the update trains on, grouped by minibatch (equal row counts,
    valid rows first in each): per row ``valid``; per token (``[R, L]``, or
    ``[R, 1]`` when constant along a row) tokens, positions, segment ids,
    mask, old log-probs, advantage and rollout."""
    if isinstance(batch, PackedUpdateBatch):  # laid out on the host already
        tree = {}
        if batch.hidden_from_RxLxM is not None:
            tree = {"hidden_from": batch.hidden_from_RxLxM, "hidden_until": batch.hidden_until_RxLxM}
        return {
            **tree,
            "tokens": batch.tokens_RxL,
            "positions": batch.positions_RxL,
            "segment_ids": batch.segment_ids_RxL,
            "mask": batch.mask_RxL,
            "old_logp": batch.old_logp_RxL,
            "valid": batch.valid_R,
            "adv": batch.adv_RxL,
            "rollout": batch.rollout_RxL,
        }
    order = _minibatch_order(batch.valid_R, batch.rollout_R, num_rollouts, minibatches)
    rows = {
        "tokens": batch.tokens_RxL,
        "positions": batch.positions_RxL,
        "segment_ids": batch.segment_ids_RxL,
        "mask": batch.mask_RxL,
        "old_logp": batch.old_logp_RxL,
        "valid": batch.valid_R,
        "adv": batch.adv_N[batch.rollout_R][:, None],
        "rollout": batch.rollout_R[:, None],
    }
    return jax.tree.map(lambda x: x[order], rows)


def padding_share(valid_R: jax.Array, segment_ids_RxL: jax.Array, chunks: int) -> jax.Array:
    """The share of token slots that the forwards compute (rows of the
    microbatches holding any valid row) but that hold no thread token."""
    rows, length = segment_ids_RxL.shape
    active = valid_R.reshape(chunks, rows // chunks).any(axis=1)
    computed = active.sum() * (rows // chunks) * length
    real = ((segment_ids_RxL > 0) & valid_R[:, None]).sum()
    return 1.0 - real / jnp.maximum(computed, 1)


def make_grpo_update(
    graphs: Graphs,
    cfg: GrpoConfig,
    *,
    num_rollouts: int,
    learning_rate: Schedule | None = None,
    state_shardings: Any = None,
) -> Callable[[TrainState, UpdateBatch | PackedUpdateBatch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns ``update(state, batch, schedule_steps) -> (state, metrics)``, jitted and
    donating ``state``, whose ``ref`` holds the frozen reference model's
    ``nnx.Param`` state (unused, and may be None, when ``kl_coef == 0``).
    ``batch`` is an ``UpdateBatch`` (one thread per row) or a
    ``PackedUpdateBatch`` (packed threads); each compiles once.
    ``schedule_steps`` (an int32 scalar, or None for ``train.steps``) is the
    update where the learning-rate schedule ends (``apr_jax.training.optim``).

    Runs ``inner_epochs`` passes of ``minibatches`` optimizer updates each; a
    step whose loss or gradient is not finite leaves the state unchanged.
    ``metrics["update_padding"]`` is the padding share of the forwards."""
    if num_rollouts % cfg.minibatches:
        raise ValueError(f"{num_rollouts} rollouts do not split into {cfg.minibatches} minibatches")

    def forward_logp(model_graphdef, params, rest, rows):
        model = nnx.merge(model_graphdef, params, rest)
        logits = model(rows["tokens"], rows["positions"], attention_keys(rows))
        logp = target_logprobs(logits, rows["tokens"], cfg.temperature)
        return jnp.where(rows["positions"] > 0, logp, 0.0)  # a thread's first token has no context

    def micro_split(x, micro):
        return x.reshape((micro, x.shape[0] // micro) + x.shape[1:])

    def update(state: TrainState, batch: UpdateBatch | PackedUpdateBatch, schedule_steps: jax.Array | None):
        R = batch.tokens_RxL.shape[0]
        M, A = cfg.minibatches, cfg.microbatches
        if R % (M * A):
            raise ValueError(f"{R} rows do not split into {M} minibatches x {A} microbatches")
        rows = _update_rows(batch, num_rollouts, M)
        policy = nnx.merge(graphs.model, state.model)
        model_graphdef, policy_params, rest = nnx.split(policy, nnx.Param, ...)

        # Whole-batch log-probs under fixed parameters (reference; the sampling
        # policy for "recompute"), skipping all-padding microbatches.
        chunks = M * A

        def batch_logp(params):
            def chunk_logp(chunk):
                return jax.lax.cond(
                    jnp.any(chunk["valid"]),
                    lambda c: forward_logp(model_graphdef, params, rest, c),
                    lambda c: jnp.zeros(c["tokens"].shape, jnp.float32),
                    chunk,
                )

            logp = jax.lax.map(chunk_logp, jax.tree.map(lambda x: micro_split(x, chunks), rows))
            return logp.reshape(rows["tokens"].shape)

        if cfg.kl_coef > 0:
            rows["ref_logp"] = batch_logp(state.ref)
        gap_metrics = {}
        if cfg.old_logprobs == "recompute":
            recomputed = batch_logp(policy_params)
            counted = rows["mask"] > 0
            gap = jnp.where(counted, jnp.abs(rows["old_logp"] - recomputed), 0.0)
            gap_metrics = {"logp_gap_mean": gap.sum() / jnp.maximum(counted.sum(), 1), "logp_gap_max": gap.max()}
            rows["old_logp"] = recomputed

        # Per-token weights: the per-rollout mean, over each minibatch's rollouts.
        mb_rows = jax.tree.map(lambda x: micro_split(x, M), rows)
        mb_rows["weights"] = jax.vmap(rollout_token_weights, in_axes=(0, 0, None))(
            mb_rows["mask"], mb_rows.pop("rollout"), num_rollouts
        )
        mb_rows = jax.tree.map(lambda x: micro_split_1(x, A), mb_rows)  # [M, A, rows, ...]

        def micro_loss(params, micro):
            logp = forward_logp(model_graphdef, params, rest, micro)
            return grpo_loss(logp, micro["old_logp"], micro.get("ref_logp"), micro["adv"], micro["weights"], cfg)

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def minibatch_step(state: TrainState, minibatch):
            _, params, _ = nnx.split(nnx.merge(graphs.model, state.model), nnx.Param, ...)
            (_, stats), grads = summed_gradients(
                grad_fn, params, minibatch, active=lambda micro: jnp.any(micro["valid"]), max_keys=("ratio_max",)
            )
            state, update_metrics = apply_gradients(graphs, state, grads, stats["loss"], learning_rate, schedule_steps)
            return state, {**stats, **update_metrics}

        def epoch(state, _):
            return jax.lax.scan(minibatch_step, state, mb_rows)

        # The reference stays out of the scan's carry.
        trained = TrainState(state.model, state.opt)
        trained, stats = jax.lax.scan(epoch, trained, None, length=cfg.inner_epochs)
        state = TrainState(trained.model, trained.opt, state.ref)
        # stats: [epochs, minibatches]; the mean over all updates (lr: the last, ratio_max: the max).
        metrics = {k: v.mean() for k, v in stats.items() if k not in ("finite", "lr", "ratio_max")}
        metrics["ratio_max"] = stats["ratio_max"].max()
        if "lr" in stats:
            metrics["lr"] = stats["lr"][-1, -1]
        metrics["finite"] = jnp.all(stats["finite"])
        metrics["update_padding"] = padding_share(rows["valid"], rows["segment_ids"], chunks)
        return state, {**metrics, **gap_metrics}

    jit_kwargs: dict[str, Any] = {"donate_argnums": (0,)}
    if state_shardings is not None:
        jit_kwargs.update(in_shardings=(state_shardings, None, None), out_shardings=(state_shardings, None))
    return jax.jit(update, **jit_kwargs)


def micro_split_1(x: jax.Array, micro: int) -> jax.Array:
    """[M, rows, ...] -> [M, micro, rows / micro, ...]."""
    return x.reshape((x.shape[0], micro, x.shape[1] // micro) + x.shape[2:])
