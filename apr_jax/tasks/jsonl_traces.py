"""Your own parallel traces: a task read from ``ThreadTree`` JSONL files.

    config.task.name = "jsonl_traces"
    config.task.train / .validation / .test = "path/to/split.jsonl"   ("" = empty split)
    config.task.checker = "exact" | "numeric" | "module:function"
    config.task.answer_prefix = "Answer:"   ("" = the last non-empty line)
    config.task.format = "tree" | "multiverse" | "threadweaver"
    config.task.max_depth = 2   (tagged formats: the deepest nesting of parallel blocks)

With ``format = "tree"`` (the default, context family ``message``) each line
is one tree as ``ThreadTree.to_json`` writes it. The root's first
segment is its prompt (role ``prompt``); ``problem.answer`` is the reference
answer the checker compares with. Every child starts with the prompt
``<child>`` + the message its parent's spawn block gave it, ends with a
return block and stop ``return``; every join segment holds the return
messages of the children of the spawn before it, as the engine would copy
them in. A tree that breaks a rule is a one-line error naming the file, the
line and the rule.

With ``format = "multiverse"`` or ``"threadweaver"`` (context family
``inherit``: a child sees its parent's context up to the fork) each line is
``{"prompt": str, "answer": str | number, "text": str}``, the response written
with that format's parallel-block tags; ``apr_jax.tasks.tagged_text`` turns it
into a tree and says what it accepts. Errors read ``path:line: ...`` too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping

from apr_jax import protocol
from apr_jax.data.tfds_builder import AprTraceFiles
from apr_jax.runtime.jsonl import read_jsonl
from apr_jax.tasks.base import Score
from apr_jax.tasks.checkers import make_checker
from apr_jax.tasks.tagged_text import FORMATS, parse_tagged_line
from apr_jax.threads import ThreadTree

SPLITS = ("train", "validation", "test")
_RETURN_RE = re.compile(re.escape(protocol.RETURN_OPEN) + "(.*)" + re.escape(protocol.RETURN_CLOSE) + r"\Z", re.S)
TRACE_FORMATS = ("tree", *FORMATS)  # config.task.format


@dataclasses.dataclass(frozen=True)
class TextProblem:
    """A problem given as text: the root's prompt and the reference answer."""

    prompt: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer}

    @classmethod
    def from_dict(cls, d: Any) -> "TextProblem":
        if not isinstance(d, Mapping):
            raise ValueError(f"problem must be an object, got {type(d).__name__}")
        for key in ("prompt", "answer"):
            if key not in d:
                raise ValueError(f"problem is missing key {key!r}")
        if not isinstance(d["prompt"], str) or not d["prompt"]:
            raise ValueError("'prompt' must be a non-empty string")
        return cls(d["prompt"], _answer_text(d["answer"]))

    @property
    def key(self) -> tuple[str, str]:
        return self.prompt, self.answer


def _answer_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'answer' must be a string or a number, got {type(value).__name__}")
    return str(value)


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def parse_tree(d: Any) -> ThreadTree:
    """A ``ThreadTree`` from its JSON value, checked against the rules in the
    module docstring; ValueError names the first rule broken."""
    if not isinstance(d, Mapping):
        raise ValueError(f"tree must be an object, got {type(d).__name__}")
    for key in ("problem", "threads"):
        if key not in d:
            raise ValueError(f"tree is missing key {key!r}")
    if not isinstance(d["problem"], Mapping) or "answer" not in d["problem"]:
        raise ValueError("problem is missing key 'answer' (the reference answer)")
    _answer_text(d["problem"]["answer"])
    if not isinstance(d["threads"], list) or not d["threads"]:
        raise ValueError("'threads' must be a non-empty list")
    for i, t in enumerate(d["threads"]):
        if not isinstance(t, Mapping) or "parent" not in t or "segments" not in t:
            raise ValueError(f"thread {i} must be an object with 'parent' and 'segments'")
        if not isinstance(t["segments"], list) or not all(
            isinstance(s, Mapping) and _is_str(s.get("role")) and _is_str(s.get("text")) for s in t["segments"]
        ):
            raise ValueError(f"thread {i}: every segment needs a string 'role' and 'text'")
    try:
        tree = ThreadTree.from_dict(d)
        tree.validate()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a valid thread tree: {e}") from None
    _check_threads(tree)
    return tree


def _check_threads(tree: ThreadTree) -> None:
    root = tree.threads[0]
    if len(root.segments) < 2 or root.segments[0].role != "prompt" or root.segments[1].role != "model":
        raise ValueError("thread 0 (the root) must start with one prompt segment followed by model text")
    if not root.segments[0].text:
        raise ValueError("thread 0 (the root) has an empty prompt")
    if root.stop != "eos":
        raise ValueError(f"thread 0 (the root) must stop with 'eos', got {root.stop!r}")
    for i, thread in enumerate(tree.threads[1:], start=1):
        if thread.stop != "return" or not _RETURN_RE.search(thread.written_text):
            raise ValueError(
                f"thread {i} never returns: a child must end with "
                f"{protocol.RETURN_OPEN}...{protocol.RETURN_CLOSE} and stop 'return' "
                f"(got stop {thread.stop!r})"
            )
    for i, thread in enumerate(tree.threads):
        spawns = protocol.spawn_messages(thread.written_text)
        messages = [m for block in spawns for m in block]
        if len(messages) != len(thread.children):
            raise ValueError(
                f"thread {i} writes {len(messages)} spawn messages but lists {len(thread.children)} children"
            )
        for child, message in zip(thread.children, messages):
            first = tree.threads[child].segments[:1]
            if not first or first[0].role != "prompt" or first[0].text != protocol.child_prompt(message):
                raise ValueError(
                    f"thread {child} must start with the prompt segment "
                    f"{protocol.child_prompt(message)!r} (its spawn message)"
                )
        joins = [s.text for s in thread.segments if s.role == "join"]
        children = iter(thread.children)
        expected = [
            protocol.join_block([_RETURN_RE.search(tree.threads[next(children)].written_text).group(1) for _ in block])
            for block in spawns
        ]
        if joins != expected:
            raise ValueError(
                f"thread {i}'s join segments {joins!r:.120} are not its children's return messages {expected!r:.120}"
            )


def _check_format(trace_format: Any, max_depth: Any) -> None:
    """``config.task.format`` and ``config.task.max_depth``, checked."""
    if trace_format not in TRACE_FORMATS:
        raise ValueError(f"config.task.format={trace_format!r} is not one of {', '.join(TRACE_FORMATS)}")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"config.task.max_depth must be a positive integer, got {max_depth!r}")


def problem_of(tree: ThreadTree) -> TextProblem:
    return TextProblem(tree.threads[0].segments[0].text, _answer_text(tree.problem["answer"]))


class JsonlTracesTask:
    name = "jsonl_traces"
    answer_key = "final_answer"
    problem_type = TextProblem
    streams_traces = False  # the trees are given, not generated
    accelerator_hint = ""

    def __init__(
        self,
        paths: Mapping[str, str],
        checker: str = "exact",
        answer_prefix: str = "",
        trace_format: str = "tree",
        max_depth: int = 2,
    ):
        _check_format(trace_format, max_depth)
        self.paths = {split: os.path.abspath(paths[split]) if paths[split] else "" for split in SPLITS}
        self.answer_prefix = answer_prefix
        self.trace_format = trace_format
        self.max_depth = max_depth
        self._check = make_checker(checker, answer_prefix)
        self._trees: dict[str, list[ThreadTree]] | None = None

    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        """``format`` and ``max_depth``; the files are checked when they are read."""
        _check_format(task.get("format", "tree"), task.get("max_depth", 2))

    @staticmethod
    def contexts(task: Mapping[str, Any]) -> tuple[str, ...]:
        """``message`` for ``format = "tree"``, ``inherit`` for the tagged formats."""
        trace_format = task.get("format", "tree")
        _check_format(trace_format, task.get("max_depth", 2))
        return ("message",) if trace_format == "tree" else ("inherit",)

    @classmethod
    def from_config(cls, config: Any) -> "JsonlTracesTask":
        t = config.task.as_dict()
        known = {"name", "train", "validation", "test", "checker", "answer_prefix", "format", "max_depth"}
        unknown = sorted(set(t) - known)
        if unknown:
            raise ValueError(
                f"config.task.{unknown[0]} is not a jsonl_traces setting (known: {', '.join(sorted(known))})"
            )
        if not t.get("train"):
            raise ValueError("config.task.train is empty; name the training traces' JSONL file")
        return cls(
            {s: str(t.get(s) or "") for s in SPLITS},
            str(t.get("checker", "exact")),
            str(t.get("answer_prefix", "")),
            t.get("format", "tree"),
            t.get("max_depth", 2),
        )

    # ---- files ------------------------------------------------------------------
    def trees(self) -> dict[str, list[ThreadTree]]:
        """Every split's checked trees (read once)."""
        if self._trees is None:
            parse = self._parse_line
            self._trees = {
                split: read_jsonl(path, parse, kind="trace file") if path else [] for split, path in self.paths.items()
            }
        return self._trees

    def _parse_line(self, d: Any) -> ThreadTree:
        """One line's tree, read as ``config.task.format`` says."""
        if self.trace_format == "tree":
            return parse_tree(d)
        return parse_tagged_line(d, self.trace_format, self.max_depth)

    def splits(self) -> dict[str, list[TextProblem]]:
        return {split: [problem_of(t) for t in trees] for split, trees in self.trees().items()}

    def cache_key(self) -> dict[str, Any]:
        """The content of the trace files (a changed file builds a new dataset)."""
        digests = {}
        for split, path in self.paths.items():
            if path and not os.path.isfile(path):
                raise ValueError(f"trace file not found: {path} (config.task.{split})")
            digests[split] = hashlib.sha256(open(path, "rb").read()).hexdigest() if path else ""
        return {"trace_files_sha256": digests}

    # ---- prompts and verdicts ------------------------------------------------------
    def prompt(self, problem: TextProblem, prefix: str = "") -> str:
        return prefix + problem.prompt

    def score(self, text: str, problem: TextProblem) -> Score:
        if not isinstance(text, str):
            return Score(0.0, f"text must be a string, got {type(text).__name__}")
        return self._check(text, problem.to_dict())

    def difficulty(self, problem: TextProblem) -> None:
        """No oracle difficulty: a problem given as text has none."""
        del problem
        return None

    def dataset_builder(self, *, data_dir: str, num_workers: int, show_progress: bool) -> Any:
        del num_workers, show_progress  # nothing to generate
        trees = self.trees()
        failed = {
            split: sum(not self.score(t.threads[0].written_text, problem_of(t)).ok for t in ts)
            for split, ts in trees.items()
        }
        return AprTraceFiles(
            trees={s: [t.to_json() for t in ts] for s, ts in trees.items()},
            problems=self.splits(),
            failed=failed,
            data_dir=data_dir,
        )
