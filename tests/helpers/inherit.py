"""A hand-built thread tree that exercises every case of the inherit family's
layout (two spawn rounds at the root, a grandchild, a one-child spawn), a
character-level encoder that needs no trained tokenizer, and a tiny decoder
that has memorized the tree's sequence in either join mode."""

import functools
import re
import string

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from apr_jax import protocol
from apr_jax.data.tree_sequence import TreeSequence, tree_sequence
from apr_jax.model.transformer import Transformer
from apr_jax.model.tree_mask import TreeMask
from apr_jax.threads import Segment, Thread, ThreadTree
from apr_jax.training.loss import masked_lm_loss
from helpers.tiny import tiny_model_config


class CharEncoder:
    """Reserved protocol strings are one token each (ids as ``ProtocolIds``
    defaults); every other printable character is one token; unk otherwise."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    _SPLIT = re.compile("(" + "|".join(re.escape(t) for t in protocol.RESERVED) + ")")
    _CHARS = string.ascii_letters + string.digits + " .,:;=+-*/()[]<>\n"

    def __init__(self):
        self.reserved = {t: 4 + i for i, t in enumerate(protocol.RESERVED)}
        self.chars = {c: 16 + i for i, c in enumerate(self._CHARS)}
        self.names = {i: t for t, i in {**self.reserved, **self.chars}.items()}
        self.vocab_size = 16 + len(self._CHARS)

    def encode(self, text: str) -> list[int]:
        out = []
        for part in self._SPLIT.split(text):
            if part in self.reserved:
                out.append(self.reserved[part])
            else:
                out.extend(self.chars.get(c, self.unk_id) for c in part)
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.names.get(int(i), "") for i in ids)


def nested_tree() -> ThreadTree:
    """Root spawns x, y (x spawns w), then z; message-mode joins."""
    p = protocol
    root = Thread(
        -1,
        [
            Segment("prompt", "P"),
            Segment("model", "a" + p.spawn_block(["x", "y"])),
            Segment("join", p.join_block(["r", "s"])),
            Segment("model", "b" + p.spawn_block(["z"])),
            Segment("join", p.join_block(["t"])),
            Segment("model", "c"),
        ],
        children=[1, 2, 4],
    )
    x = Thread(
        0,
        [
            Segment("prompt", p.child_prompt("x")),
            Segment("model", "d" + p.spawn_block(["w"])),
            Segment("join", p.join_block(["u"])),
            Segment("model", "e" + p.return_block("r")),
        ],
        children=[3],
        stop="return",
    )
    y = Thread(0, [Segment("prompt", p.child_prompt("y")), Segment("model", "ff" + p.return_block("s"))], stop="return")
    w = Thread(1, [Segment("prompt", p.child_prompt("w")), Segment("model", p.return_block("u"))], stop="return")
    z = Thread(0, [Segment("prompt", p.child_prompt("z")), Segment("model", "gg" + p.return_block("t"))], stop="return")
    return ThreadTree({"answer": "1"}, [root, x, y, w, z])


def sequence_batch(seq: TreeSequence) -> dict:
    """One tree sequence as a batch of one row."""
    return {
        "tokens": jnp.asarray(seq.tokens_T[None]),
        "positions": jnp.asarray(seq.positions_T[None]),
        "loss_mask": jnp.asarray(seq.loss_mask_T[None]),
        "segment_ids": jnp.ones((1, len(seq)), jnp.int32),
    }


def sequence_mask(seq: TreeSequence) -> TreeMask:
    """The tree mask of ``sequence_batch(seq)``."""
    return TreeMask(
        jnp.ones((1, len(seq)), jnp.int32),
        jnp.asarray(seq.hidden_from_TxR[None]),
        jnp.asarray(seq.hidden_until_TxR[None]),
    )


# Engine limits that hold ``nested_tree`` (two spawn rounds, a grandchild) within
# ``memorized_model``'s 128 positions.
NESTED_LIMITS = dict(max_children=2, max_rounds=2, max_depth=2, tokens_per_thread=40, max_context=128)


@functools.lru_cache(maxsize=None)
def memorized_model(join: str, steps: int = 300) -> Transformer:
    """A tiny decoder trained on ``nested_tree``'s tree sequence in ``join``
    mode until it reproduces it (trained once per process)."""
    encoder = CharEncoder()
    seq = tree_sequence(nested_tree().with_context("inherit", join), encoder, join)
    model = Transformer(tiny_model_config(vocab_size=encoder.vocab_size, max_len=128, d_model=64), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch, mask = sequence_batch(seq), sequence_mask(seq)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(batch["tokens"], batch["positions"], mask)
            total, count, _ = masked_lm_loss(logits, batch)
            return total / count

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    for _ in range(steps):
        params, opt_state, value = step(params, opt_state)
    assert float(value) < 1e-3
    return nnx.merge(graphdef, params, rest)
