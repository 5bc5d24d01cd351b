"""Reading JSONL input files with one-line errors that name the file and line."""

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


def write_jsonl(path: str, items: Iterable[Any]) -> None:
    """One compact JSON line per item's ``to_dict()``."""
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_dict(), separators=(",", ":")) + "\n")
