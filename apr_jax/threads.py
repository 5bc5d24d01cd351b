"""ThreadTree: the one data type shared by the trace generator, the dataset,
the decoding engine's output and the RL rollout.

A tree holds one problem and its threads. ``threads[0]`` is the root; every
other thread names its parent, and parents list their children in spawn order.
Each thread is a list of segments whose ``role`` says who wrote them:

- ``prompt``: the context the engine gives the thread (the problem for the
  root, ``<child>`` + spawn message for a child); not model output.
- ``model``: tokens the model writes (including its spawn and return blocks).
- ``join``: a join block the engine copied in; an input, not model output.

``to_sequences`` turns the tree into one training sequence per thread, built
exactly as the engine builds that thread's context: BOS, then each segment
encoded on its own, then EOS when the thread ended by writing EOS.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Protocol

import numpy as np

from apr_jax import protocol

ROLES = ("prompt", "model", "join")
# Why a thread stopped. "eos" and "return" are normal ends; the rest are
# limits the engine enforced (or "running" for a thread never finished).
STOPS = ("eos", "return", "token_limit", "context_limit", "depth_limit", "round_limit", "cancelled", "running")


class Encoder(Protocol):
    """What ``to_sequences`` needs from a tokenizer."""

    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass
class Segment:
    role: str
    text: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"segment role {self.role!r} is not one of {ROLES}")


@dataclasses.dataclass
class Thread:
    parent: int  # -1 for the root
    segments: list[Segment]
    children: list[int] = dataclasses.field(default_factory=list)
    stop: str = "eos"

    def __post_init__(self):
        if self.stop not in STOPS:
            raise ValueError(f"thread stop {self.stop!r} is not one of {STOPS}")

    @property
    def text(self) -> str:
        """The thread's whole context as text (without BOS/EOS)."""
        return "".join(s.text for s in self.segments)

    @property
    def written_text(self) -> str:
        """Only what the model wrote in this thread."""
        return "".join(s.text for s in self.segments if s.role == "model")


@dataclasses.dataclass
class TokenSequence:
    """One thread as tokens. ``loss_mask[i]`` is 1 when token ``i`` is model
    output, i.e. when predicting ``tokens[i]`` from ``tokens[:i]`` is trained."""

    tokens: np.ndarray  # int32 [L]
    loss_mask: np.ndarray  # int32 [L], 0/1


@dataclasses.dataclass
class ThreadTree:
    problem: dict[str, Any]
    threads: list[Thread]
    solution: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ---- structure -------------------------------------------------------
    def depth(self, index: int) -> int:
        """0 for the root, 1 for its children, ..."""
        depth = 0
        while self.threads[index].parent >= 0:
            index = self.threads[index].parent
            depth += 1
        return depth

    def validate(self) -> None:
        """Raise ValueError if parent/child links are inconsistent."""
        if not self.threads or self.threads[0].parent != -1:
            raise ValueError("threads[0] must be the root (parent -1)")
        for i, thread in enumerate(self.threads[1:], start=1):
            p = thread.parent
            if not 0 <= p < len(self.threads) or p == i:
                raise ValueError(f"thread {i} has bad parent {p}")
            if i not in self.threads[p].children:
                raise ValueError(f"thread {i} is missing from parent {p}'s children")

    def spawn_groups(self, index: int) -> list[list[int]]:
        """Thread ``index``'s children, one list per spawn block it wrote (in
        order); ValueError when the blocks' messages do not match its children.
        A decoded tree (``meta["spawn_round"]``, the spawn that made each
        thread) is grouped by what the engine did: a spawn block the engine
        cut off at a limit made fewer children than messages, or none."""
        thread = self.threads[index]
        made_by = self.meta.get("spawn_round")
        if made_by is not None:
            groups: list[list[int]] = [[] for _ in range(1 + max((made_by[c] for c in thread.children), default=-1))]
            for child in thread.children:
                groups[made_by[child]].append(child)
            return groups
        sizes = [len(block) for block in protocol.spawn_messages(thread.written_text)]
        if sum(sizes) != len(thread.children):
            raise ValueError(
                f"thread {index} writes {sum(sizes)} spawn messages but lists {len(thread.children)} children"
            )
        children = iter(thread.children)
        return [[next(children) for _ in range(size)] for size in sizes]

    def with_context(self, context: str, join: str) -> "ThreadTree":
        """This tree with every join segment as the engine writes it in
        ``context`` (``protocol.CONTEXTS``) and ``join`` mode: message-mode
        trees are returned as they are; inherit-mode joins are rebuilt from
        the children's whole texts (``protocol.inherit_join``)."""
        if context not in protocol.CONTEXTS:
            raise ValueError(f"context {context!r} is not one of {protocol.CONTEXTS}")
        if context == "message":
            return self
        tree = ThreadTree.from_dict(self.to_dict())

        def rebuild(index: int) -> None:
            groups = iter(tree.spawn_groups(index))
            for segment in tree.threads[index].segments:
                if segment.role == "join":
                    group = next(groups, [])
                    for child in group:
                        rebuild(child)
                    segment.text = protocol.inherit_join([tree.threads[c].text for c in group], join)
            for group in groups:  # spawned but never joined (cut off by a limit)
                for child in group:
                    rebuild(child)

        rebuild(0)
        return tree

    @property
    def num_spawned(self) -> int:
        return len(self.threads) - 1

    # ---- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts, keyed as ``from_dict`` reads them (a copy:
        nothing in it aliases the tree)."""
        return {
            "problem": copy.deepcopy(self.problem),
            "threads": [
                {
                    "parent": t.parent,
                    "segments": [{"role": s.role, "text": s.text} for s in t.segments],
                    "children": list(t.children),
                    "stop": t.stop,
                }
                for t in self.threads
            ],
            "solution": list(self.solution),
            "meta": copy.deepcopy(self.meta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThreadTree":
        threads = [
            Thread(
                parent=t["parent"],
                segments=[Segment(**s) for s in t["segments"]],
                children=list(t.get("children", [])),
                stop=t.get("stop", "eos"),
            )
            for t in d["threads"]
        ]
        return cls(
            problem=d["problem"], threads=threads, solution=list(d.get("solution", [])), meta=dict(d.get("meta", {}))
        )

    @classmethod
    def from_json(cls, s: str) -> "ThreadTree":
        return cls.from_dict(json.loads(s))

    # ---- training data ---------------------------------------------------
    def to_sequences(self, tokenizer: Encoder) -> list[TokenSequence]:
        """One sequence per thread, identical to the engine's context for it."""
        out = []
        for thread in self.threads:
            tokens, mask = [tokenizer.bos_id], [0]
            for seg in thread.segments:
                ids = tokenizer.encode(seg.text)
                tokens.extend(ids)
                mask.extend([int(seg.role == "model")] * len(ids))
            if thread.stop == "eos":
                tokens.append(tokenizer.eos_id)
                mask.append(1)
            out.append(TokenSequence(np.asarray(tokens, np.int32), np.asarray(mask, np.int32)))
        return out

    # ---- display ---------------------------------------------------------
    def render(self, max_chars: int = 2000) -> str:
        """The tree as indented text, children under their parent."""
        lines: list[str] = []

        def visit(i: int, indent: str) -> None:
            t = self.threads[i]
            lines.append(f"{indent}[thread {i} depth {self.depth(i)} stop={t.stop}]")
            text = t.text if len(t.text) <= max_chars else t.text[:max_chars] + "..."
            for line in text.splitlines() or [""]:
                lines.append(indent + "  " + line)
            for c in t.children:
                visit(c, indent + "    ")

        visit(0, "")
        lines.append(f"solution: {self.solution}")
        return "\n".join(lines)
