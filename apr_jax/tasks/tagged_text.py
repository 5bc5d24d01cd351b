"""Inherit-family traces written as tagged text (Multiverse, ThreadWeaver) and
their ``ThreadTree`` form.

In the inherit context family a child sees its parent's whole context up to
the fork, then its own path header. A trace is one response text in which a
parallel block lists one outline per path and then the paths themselves:

    multiverse:   <Parallel><Goal><Outline>O_1</Outline>...</Goal><Path>P_1</Path>...<Path>P_n</Path>
                  <Conclusion>C</Conclusion></Parallel>
    threadweaver: <Parallel><Outlines><Outline>O_1</Outline>...</Outlines><Thread>T_1</Thread>...
                  </Parallel>

As a tree, the block becomes its thread's spawn block ``<spawn>O_1<sep>...<sep>O_n</spawn>``
and one child per path, appended in depth-first preorder. Child ``i`` has the
prompt ``<child>O_i`` and the model text ``P_i</return>`` (split the same way
when ``P_i`` holds blocks of its own). The forking thread gets a ``<join>``
segment after the spawn, then the text that follows the last path (the
conclusion and ``</Parallel>`` stay literal text there). ``tree_to_text``
rebuilds the tagged text from the tree.

Whitespace between structural tags (``<Parallel>`` and the outlines list,
between outlines, before the first path, between paths) is accepted and
dropped; any other text there, an unclosed or unopened tag, a path count
that differs from the outline count, nesting deeper than ``max_depth`` or a
reserved protocol token in the text is a one-line ``ValueError`` naming the tag.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Union

from apr_jax import protocol
from apr_jax.threads import Segment, Thread, ThreadTree


@dataclasses.dataclass(frozen=True)
class TagFormat:
    """The tag names of one tagged-text format (without angle brackets)."""

    block: str  # the parallel block, closed later in the forking thread's own text
    header: str  # the list of outlines right after the block opener
    outline: str  # one path's outline (its spawn message)
    path: str  # one path's text (a child thread)

    @staticmethod
    def open(name: str) -> str:
        return f"<{name}>"

    @staticmethod
    def close(name: str) -> str:
        return f"</{name}>"

    def tags(self) -> list[str]:
        """Every structural tag, opening and closing."""
        names = (self.block, self.header, self.outline, self.path)
        return [tag for name in names for tag in (self.open(name), self.close(name))]


FORMATS: dict[str, TagFormat] = {
    "multiverse": TagFormat(block="Parallel", header="Goal", outline="Outline", path="Path"),
    "threadweaver": TagFormat(block="Parallel", header="Outlines", outline="Outline", path="Thread"),
}


@dataclasses.dataclass
class _Block:
    """One parsed parallel block: outlines and the paths' parsed bodies."""

    outlines: list[str]
    paths: list[list[_Item]]


_Item = Union[str, _Block]  # a body is literal text and blocks, in order


def get_format(fmt: str) -> TagFormat:
    """The tag set named ``fmt``; ValueError for an unknown name."""
    if fmt not in FORMATS:
        raise ValueError(f"tagged format {fmt!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _snippet(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:30] + "...")


def _check_reserved(what: str, text: str) -> None:
    for token in protocol.RESERVED:
        if token in text:
            raise ValueError(f"{what} contains the reserved protocol token {token!r}")


def _tokenize(text: str, tags: TagFormat) -> list[tuple[bool, str]]:
    """``text`` as (is_tag, string) pieces, empty text pieces dropped."""
    pattern = re.compile("(" + "|".join(re.escape(t) for t in tags.tags()) + ")")
    pieces = pattern.split(text)
    return [(i % 2 == 1, piece) for i, piece in enumerate(pieces) if piece]


class _Parser:
    """Recursive descent over one response's tokens."""

    def __init__(self, text: str, tags: TagFormat, max_depth: int):
        self.tokens = _tokenize(text, tags)
        self.pos = 0
        self.t = tags
        self.max_depth = max_depth

    # ---- token access ---------------------------------------------------------
    def peek(self, ahead: int = 0) -> tuple[bool, str] | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self) -> tuple[bool, str] | None:
        token = self.peek()
        self.pos += token is not None
        return token

    def peek_tag(self, ahead: int = 0) -> str | None:
        """The tag at ``ahead``, or None when it is text or the end."""
        token = self.peek(ahead)
        return token[1] if token and token[0] else None

    def skip_space(self, where: str) -> None:
        """Drop whitespace-only text; other text here is an error."""
        token = self.peek()
        if token and not token[0]:
            if token[1].strip():
                raise ValueError(f"text {_snippet(token[1])} {where}")
            self.pos += 1

    # ---- grammar --------------------------------------------------------------
    def body(self, depth: int, in_path: bool) -> list[_Item]:
        """A thread's text up to the end (root) or its path's closing tag."""
        t = self.t
        items: list[_Item] = []
        open_blocks = 0
        while True:
            token = self.take()
            if token is None:
                return self._end_of_text(items, open_blocks, in_path)
            is_tag, value = token
            if not is_tag:
                items.append(value)
            elif value == t.open(t.block):
                items.append(self.block(depth + 1))
                open_blocks += 1
            elif value == t.close(t.block) and open_blocks:
                items.append(value)
                open_blocks -= 1
            elif in_path and value == t.close(t.path):
                if open_blocks:
                    raise ValueError(f"{t.open(t.block)} is not closed by {t.close(t.block)} before {value}")
                return items
            else:
                raise self._unexpected(value, in_path)

    def _end_of_text(self, items: list[_Item], open_blocks: int, in_path: bool) -> list[_Item]:
        t = self.t
        if in_path:
            raise ValueError(f"{t.open(t.path)} is never closed by {t.close(t.path)}")
        if open_blocks:
            raise ValueError(f"{t.open(t.block)} is never closed by {t.close(t.block)}")
        return items

    def _unexpected(self, tag: str, in_path: bool) -> ValueError:
        """The error for a structural tag found where a thread's text goes."""
        t = self.t
        if in_path and tag in (t.open(t.path), t.close(t.block)):
            return ValueError(f"{t.open(t.path)} is not closed by {t.close(t.path)} before {tag}")
        if tag.startswith("</"):
            return ValueError(f"{tag} has no opening {'<' + tag[2:]}")
        if tag == t.open(t.path):
            return ValueError(f"{tag} outside a {t.open(t.block)} block")
        return ValueError(f"{tag} outside a {t.open(t.block)}{t.open(t.header)} header")

    def block(self, depth: int) -> _Block:
        """A parallel block after its opening tag, up to its last path."""
        t = self.t
        if depth > self.max_depth:
            raise ValueError(f"{t.open(t.block)} nesting depth {depth} exceeds max_depth {self.max_depth}")
        self.skip_space(f"between {t.open(t.block)} and {t.open(t.header)}")
        token = self.take()
        if token != (True, t.open(t.header)):
            found = "the end of the text" if token is None else _snippet(token[1])
            raise ValueError(f"{t.open(t.block)} must be followed by {t.open(t.header)}, found {found}")
        outlines = self.outlines()
        paths = self.paths(depth)
        if len(paths) != len(outlines):
            raise ValueError(f"{len(paths)} {t.open(t.path)} blocks for {len(outlines)} {t.open(t.outline)}s")
        return _Block(outlines, paths)

    def outlines(self) -> list[str]:
        """The outlines list after its opening tag, through its closing tag."""
        t = self.t
        outlines: list[str] = []
        while True:
            self.skip_space(f"between {t.open(t.outline)}s in {t.open(t.header)}")
            token = self.take()
            if token == (True, t.open(t.outline)):
                outlines.append(self.outline())
            elif token == (True, t.close(t.header)):
                break
            elif token is None:
                raise ValueError(f"{t.open(t.header)} is never closed by {t.close(t.header)}")
            else:
                raise ValueError(f"{t.open(t.header)} is not closed by {t.close(t.header)} before {token[1]}")
        if not outlines:
            raise ValueError(f"{t.open(t.header)} has no {t.open(t.outline)}")
        return outlines

    def outline(self) -> str:
        """One outline's text after its opening tag, through its closing tag."""
        t = self.t
        text = ""
        token = self.take()
        if token and not token[0]:
            text, token = token[1], self.take()
        if token == (True, t.close(t.outline)):
            return text
        if token is None:
            raise ValueError(f"{t.open(t.outline)} is never closed by {t.close(t.outline)}")
        raise ValueError(f"{t.open(t.outline)} is not closed by {t.close(t.outline)} before {token[1]}")

    def paths(self, depth: int) -> list[list[_Item]]:
        """The paths after the outlines list, whitespace between them dropped."""
        t = self.t
        self.skip_space(f"between {t.close(t.header)} and the first {t.open(t.path)}")
        paths: list[list[_Item]] = []
        while self.peek_tag() == t.open(t.path):
            self.take()
            paths.append(self.body(depth, in_path=True))
            token = self.peek()
            if token and not token[0] and self.peek_tag(1) == t.open(t.path):
                self.skip_space(f"between {t.open(t.path)} blocks")
        return paths


# ---- text -> tree ----------------------------------------------------------------
def _add_child(tree: ThreadTree, parent: int, outline: str, path: list[_Item]) -> None:
    """Append the thread for one path (and, after it, its own descendants)."""
    index = len(tree.threads)
    tree.threads.append(Thread(parent, [Segment("prompt", protocol.child_prompt(outline))], stop="return"))
    tree.threads[parent].children.append(index)
    rest = _add_body(tree, index, path)
    tree.threads[index].segments.append(Segment("model", rest + protocol.RETURN_CLOSE))


def _add_body(tree: ThreadTree, index: int, body: list[_Item]) -> str:
    """Append a body's spawn and join segments to thread ``index`` (its
    children to the tree); return the text after its last join."""
    segments = tree.threads[index].segments
    text = ""
    for item in body:
        if isinstance(item, str):
            text += item
            continue
        segments.append(Segment("model", text + protocol.spawn_block(item.outlines)))
        for outline, path in zip(item.outlines, item.paths):
            _add_child(tree, index, outline, path)
        segments.append(Segment("join", protocol.JOIN_OPEN))
        text = ""
    return text


def text_to_tree(prompt: str, text: str, answer: str, fmt: str, max_depth: int) -> ThreadTree:
    """The thread tree of one tagged response (see the module docstring)."""
    tags = get_format(fmt)
    _check_reserved("prompt", prompt)
    _check_reserved("text", text)
    body = _Parser(text, tags, max_depth).body(0, in_path=False)
    tree = ThreadTree(
        problem={"prompt": prompt, "answer": answer}, threads=[Thread(-1, [Segment("prompt", prompt)], stop="eos")]
    )
    rest = _add_body(tree, 0, body)
    if rest:
        tree.threads[0].segments.append(Segment("model", rest))
    return tree


# ---- tree -> text ----------------------------------------------------------------
_SPAWN_RE = re.compile(re.escape(protocol.SPAWN_OPEN) + "(.*?)" + re.escape(protocol.SPAWN_CLOSE), re.S)


def _thread_text(tree: ThreadTree, index: int, tags: TagFormat) -> str:
    """Thread ``index``'s written text with each spawn block turned back into
    the tagged block holding its children's paths."""
    children = iter(tree.threads[index].children)

    def rebuild(match: re.Match) -> str:
        outlines = match.group(1).split(protocol.SEP)
        paths = []
        for _ in outlines:
            child = next(children, None)
            if child is None:
                raise ValueError(f"thread {index} spawns more paths than it has children")
            paths.append(_thread_text(tree, child, tags).removesuffix(protocol.RETURN_CLOSE))
        return (
            tags.open(tags.block)
            + tags.open(tags.header)
            + "".join(tags.open(tags.outline) + o + tags.close(tags.outline) for o in outlines)
            + tags.close(tags.header)
            + "".join(tags.open(tags.path) + p + tags.close(tags.path) for p in paths)
        )

    return _SPAWN_RE.sub(rebuild, tree.threads[index].written_text)


def tree_to_text(tree: ThreadTree, fmt: str) -> str:
    """The root's response text rebuilt in format ``fmt``; the inverse of
    ``text_to_tree`` for text with no whitespace between structural tags."""
    return _thread_text(tree, 0, get_format(fmt))


# ---- JSONL lines -------------------------------------------------------------------
def _string_field(d: Mapping[str, Any], key: str) -> str:
    if key not in d:
        raise ValueError(f"line is missing key {key!r}")
    if not isinstance(d[key], str) or not d[key]:
        raise ValueError(f"{key!r} must be a non-empty string, got {d[key]!r:.40}")
    return d[key]


def _answer_field(d: Mapping[str, Any]) -> str:
    if "answer" not in d:
        raise ValueError("line is missing key 'answer'")
    value = d["answer"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'answer' must be a string or a number, got {type(value).__name__}")
    return str(value)


def parse_tagged_line(d: Any, fmt: str, max_depth: int) -> ThreadTree:
    """The tree of one JSONL value ``{"prompt": str, "answer": str | number, "text": str}``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"line must be an object with 'prompt', 'answer' and 'text', got {type(d).__name__}")
    prompt = _string_field(d, "prompt")
    answer = _answer_field(d)
    return text_to_tree(prompt, _string_field(d, "text"), answer, fmt, max_depth)
