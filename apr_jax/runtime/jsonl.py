"""JSON lines: the one reader (one-line errors that name the file and line)
and the one writer of every ``.jsonl`` file the package writes."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")


def read_jsonl(path: str, parse: Callable[[Any], T], *, kind: str = "problem file") -> list[T]:
    """``parse`` of every non-blank line's JSON value. A missing file is
    ``ValueError("<kind> not found: path")``; a bad line, or a ValueError from
    ``parse``, is ``ValueError("path:line: what is wrong")``."""
    if not os.path.isfile(path):
        raise ValueError(f"{kind} not found: {path}")
    out: list[T] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: bad JSON ({e.msg})") from None
            try:
                out.append(parse(value))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return out


def json_line(record: Any) -> str:
    """``record`` (a dict, or an object with ``to_dict()``) as one compact JSON line."""
    value = record.to_dict() if hasattr(record, "to_dict") else record
    return json.dumps(value, separators=(",", ":")) + "\n"


def write_jsonl(path: str, records: Iterable[Any], *, append: bool = False) -> None:
    """One ``json_line`` per record, replacing the file (or after its lines)."""
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for record in records:
            f.write(json_line(record))
