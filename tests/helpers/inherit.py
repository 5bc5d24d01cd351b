"""A hand-built thread tree that exercises every case of the inherit family's
layout (two spawn rounds at the root, a grandchild, a one-child spawn), and a
character-level encoder that needs no trained tokenizer."""

import re
import string

from apr_jax import protocol
from apr_jax.threads import Segment, Thread, ThreadTree


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
