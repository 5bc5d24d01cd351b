"""The inherit family's tree sequence: one row per tree whose loss and
gradients equal those of its threads written as separate rows, each with its
whole context, and whose positions and visibility follow the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.inherit import CharEncoder, nested_tree
from helpers.tiny import tiny_model_config

from apr_jax import protocol
from apr_jax.data.pipeline import TokenizeTree, pack_sequences
from apr_jax.data.tree_sequence import MASK_RANGES, thread_rows, tree_sequence
from apr_jax.model.transformer import Transformer
from apr_jax.model.tree_mask import TreeMask, tree_mask_BxTxS
from apr_jax.training.loss import masked_lm_loss


def _sequence(join):
    return tree_sequence(nested_tree().with_context("inherit", join), CharEncoder(), join)


def _seen_threads(seq, thread):
    row = next(r for r in thread_rows(seq) if r.thread == thread)
    return sorted(set(seq.thread_T[row.index_S].tolist()))


def test_with_context_rewrites_joins_per_mode():
    tree = nested_tree()
    assert tree.with_context("message", "stitch") is tree
    stitched = tree.with_context("inherit", "stitch")
    assert [s.text for s in stitched.threads[0].segments if s.role == "join"] == [protocol.JOIN_OPEN] * 2
    linear = tree.with_context("inherit", "linear")
    x_text = linear.threads[1].text
    assert protocol.join_block([linear.threads[3].text]) in x_text  # the grandchild's path, in full
    assert linear.threads[0].segments[2].text == protocol.join_block([x_text, linear.threads[2].text])
    assert tree.threads[0].segments[2].text == protocol.join_block(["r", "s"])  # the original is untouched


def test_stitch_positions_and_visibility():
    seq = _sequence("stitch")
    start = {t: int(np.flatnonzero(seq.thread_T == t)[0]) for t in range(5)}
    # Siblings x and y start at one position: right after the root's first spawn block.
    assert seq.positions_T[start[1]] == seq.positions_T[start[2]] == seq.positions_T[start[1] - 1] + 1
    # The root's join resumes after the longest path (x, with its stitched grandchild).
    x_end, y_end = (seq.positions_T[seq.thread_T == t].max() + 1 for t in (1, 2))
    assert x_end > y_end
    join_at = start[1] + int((seq.thread_T[start[1] :] == 0).argmax())  # the root's first token after the paths
    assert seq.tokens_T[join_at] == CharEncoder().reserved[protocol.JOIN_OPEN] and seq.positions_T[join_at] == x_end
    assert _seen_threads(seq, 0) == [0, 1, 2, 3, 4]  # the root sees every stitched path
    assert _seen_threads(seq, 1) == [0, 1, 3]  # x sees its grandchild, not its sibling
    assert _seen_threads(seq, 2) == [0, 2]  # y does not see x
    assert _seen_threads(seq, 3) == [0, 1, 3]  # w inherits x's context
    assert _seen_threads(seq, 4) == [0, 1, 2, 3, 4]  # z forks after the first join: it inherits the stitched paths
    assert seq.hidden_from_TxR.shape == (len(seq), MASK_RANGES)


def test_linear_positions_and_visibility():
    seq = _sequence("linear")
    for thread, seen in {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [0, 4]}.items():
        assert _seen_threads(seq, thread) == seen
    # The root's join block restarts at the fork position: the paths hold no positions of the parent.
    root_T = np.flatnonzero(seq.thread_T == 0)
    assert np.all(np.diff(seq.positions_T[root_T]) == 1)


def test_thread_rows_train_only_their_own_tokens():
    seq = _sequence("stitch")
    rows = thread_rows(seq)
    assert sum(int(r.loss_mask_S.sum()) for r in rows) == int(seq.loss_mask_T.sum())
    for r in rows:
        assert np.all(seq.thread_T[r.index_S][r.loss_mask_S > 0] == r.thread)


def test_tree_mask_from_ids_equals_the_reference_visibility():
    seq = _sequence("stitch")
    mask = TreeMask(
        jnp.ones((1, len(seq)), jnp.int32),
        jnp.asarray(seq.hidden_from_TxR[None]),
        jnp.asarray(seq.hidden_until_TxR[None]),
    )
    np.testing.assert_array_equal(np.asarray(tree_mask_BxTxS(mask))[0], seq.sees_Q_K())


@pytest.mark.parametrize("join", ["stitch", "linear"])
def test_tree_sequence_loss_and_gradients_equal_separate_thread_rows(join):
    seq = _sequence(join)
    length = len(seq)
    model = Transformer(tiny_model_config(vocab_size=96, max_len=128), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of(params, batch, mask):
        logits = nnx.merge(graphdef, params, rest)(batch["tokens"], batch["positions"], mask)
        return masked_lm_loss(logits, batch)[:2]

    def tree_loss(params):
        batch = {
            "tokens": jnp.asarray(seq.tokens_T[None]),
            "positions": jnp.asarray(seq.positions_T[None]),
            "loss_mask": jnp.asarray(seq.loss_mask_T[None]),
            "segment_ids": jnp.ones((1, length), jnp.int32),
        }
        mask = TreeMask(
            batch["segment_ids"], jnp.asarray(seq.hidden_from_TxR[None]), jnp.asarray(seq.hidden_until_TxR[None])
        )
        return loss_of(params, batch, mask)

    rows = thread_rows(seq)

    def pad(x):
        return np.stack([np.pad(r, [(0, length - len(r))] + [(0, 0)] * (r.ndim - 1)) for r in x])

    def rows_loss(params):
        batch = {
            "tokens": jnp.asarray(pad([r.tokens_S for r in rows])),
            "positions": jnp.asarray(pad([r.positions_S for r in rows])),
            "loss_mask": jnp.asarray(pad([r.loss_mask_S for r in rows])),
            "segment_ids": jnp.asarray(pad([np.ones_like(r.tokens_S) for r in rows])),
        }
        mask = TreeMask(
            batch["segment_ids"],
            jnp.asarray(pad([r.hidden_from_SxR for r in rows])),
            jnp.asarray(pad([r.hidden_until_SxR for r in rows])),
        )
        return loss_of(params, batch, mask)

    grad = jax.grad(lambda p, f: f(p)[0], argnums=0)
    tree_sum, tree_count = tree_loss(params)
    rows_sum, rows_count = rows_loss(params)
    assert float(tree_count) == float(rows_count) == float(seq.loss_mask_T[1:].sum())
    np.testing.assert_allclose(float(tree_sum), float(rows_sum), rtol=1e-5)
    tree_g, rows_g = grad(params, tree_loss), grad(params, rows_loss)
    for a, b in zip(jax.tree.leaves(tree_g), jax.tree.leaves(rows_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def test_packed_tree_rows_keep_each_tree_apart_and_its_mask():
    """Two trees packed into one row: their hidden ranges move with them, and
    the row's mask is the two trees' masks on the diagonal, nothing across."""
    tokenize = TokenizeTree(CharEncoder(), "inherit", "stitch")
    first, second = tokenize(nested_tree())[0], tokenize(nested_tree())[0]
    n = len(first["tokens"])
    rows, truncated = pack_sequences([first, second], 2 * n + 5, packing=True)
    assert truncated == 0 and rows["tokens"].shape[0] == 1
    np.testing.assert_array_equal(rows["segment_ids"][0], [1] * n + [2] * n + [0] * 5)
    np.testing.assert_array_equal(rows["positions"][0, n : 2 * n], first["positions"])
    mask = TreeMask(*(jnp.asarray(rows[k]) for k in ("segment_ids", "hidden_from", "hidden_until")))
    sees_QxK = np.asarray(tree_mask_BxTxS(mask))[0]
    one = _sequence("stitch").sees_Q_K()
    np.testing.assert_array_equal(sees_QxK[:n, :n], one)
    np.testing.assert_array_equal(sees_QxK[n : 2 * n, n : 2 * n], one)
    assert not sees_QxK[n : 2 * n, :n].any() and not sees_QxK[:n, n:].any()


def test_a_decoded_spawn_the_engine_cut_off_lays_out_by_the_engines_spawn_rounds():
    """A decoded tree whose thread wrote a spawn block the engine refused (a
    depth limit: no children, no join) is grouped by the engine's record of
    which spawn made each thread (``meta["spawn_round"]``), not by its text."""
    tree = nested_tree().with_context("inherit", "stitch")
    y = tree.threads[2]
    y.segments[-1] = type(y.segments[-1])("model", "ff" + protocol.spawn_block(["q"]))
    y.stop = "depth_limit"
    with pytest.raises(ValueError, match="thread 2 writes 1 spawn messages but lists 0 children"):
        tree.spawn_groups(2)
    tree.meta["spawn_round"] = [-1, 0, 0, 0, 1]  # x, y: the root's first spawn; w: x's; z: the root's second
    assert [tree.spawn_groups(i) for i in range(5)] == [[[1, 2], [4]], [[3]], [], [], []]
    seq = tree_sequence(tree, CharEncoder(), "stitch")
    assert _seen_threads(seq, 4) == [0, 1, 2, 3, 4] and _seen_threads(seq, 2) == [0, 2]
    assert seq.tokens_T[seq.thread_T == 2][-1] == CharEncoder().reserved[protocol.SPAWN_CLOSE]  # y ends at its spawn
