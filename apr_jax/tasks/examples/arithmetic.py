"""Multi-step arithmetic word problems with a parallel decomposition, written
as ``ThreadTree`` JSONL for the ``jsonl_traces`` task:

    python -m apr_jax.tasks.examples.arithmetic --out examples/arithmetic
    python -m apr_jax.tasks.examples.arithmetic --out examples/arithmetic_mv --format=multiverse

writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (the bundled
copies in ``examples/`` come from these commands with their defaults).
Each problem buys a few groups of items; the root spawns one child per group,
each child multiplies its group out and returns the product, and the root adds
the joined products (less what was given away) and writes ``Answer: N``::

    root:   Ana buys 3 boxes of 12 pens and 4 bags of 5 pens, then gives away 9. How many pens?
            <spawn>3 boxes of 12<sep>4 bags of 5</spawn><join>36<sep>20</join>
            36+20-9=47
            Answer: 47
    child:  <child>3 boxes of 12 -> 3*12=36 <return>36</return>

With ``--format=multiverse`` the same problems are written as Multiverse-style
tagged text for the inherit family (``jsonl_traces`` with ``format =
"multiverse"``): each path sees the problem, and the conclusion reads the paths::

    {"prompt": "Ana buys ...\n", "answer": 47, "text": "<Parallel><Goal><Outline>3 boxes of 12</Outline>
     <Outline>4 bags of 5</Outline></Goal><Path>3*12=36</Path><Path>4*5=20</Path>
     <Conclusion>36+20-9=47</Conclusion></Parallel>\nAnswer: 47\n"}
"""

from __future__ import annotations

import os
import random
import sys
from typing import Sequence

from apr_jax import protocol
from apr_jax.cli import Command, Flag, UsageError, read_command_line, run_command
from apr_jax.runtime.jsonl import write_jsonl
from apr_jax.threads import Segment, Thread, ThreadTree

NAMES = ("Ana", "Ben", "Cai", "Dee", "Eli", "Fay")
ITEMS = ("pens", "eggs", "cards", "nuts", "tiles")
CONTAINERS = ("boxes", "bags", "packs", "jars", "crates")
ANSWER_PREFIX = "Answer:"
SPLIT_SIZES = {"train": 256, "validation": 32, "test": 32}
FORMATS = ("tree", "multiverse")


def make_tree(rng: random.Random) -> ThreadTree:
    """One problem and its APR trace."""
    item = rng.choice(ITEMS)
    containers = rng.sample(CONTAINERS, rng.randint(2, 3))
    groups = [(rng.randint(2, 9), container, rng.randint(2, 15)) for container in containers]
    products = [count * size for count, _, size in groups]
    give_away = rng.randint(1, min(products)) if rng.random() < 0.5 else 0
    answer = sum(products) - give_away
    bought = " and ".join(f"{count} {container} of {size} {item}" for count, container, size in groups)
    then = f", then gives away {give_away}" if give_away else ""
    prompt = f"{rng.choice(NAMES)} buys {bought}{then}. How many {item}?\n"

    messages = [f"{count} {container} of {size}" for count, container, size in groups]
    sum_line = "+".join(map(str, products)) + (f"-{give_away}" if give_away else "") + f"={answer}"
    root = Thread(
        parent=-1,
        segments=[
            Segment("prompt", prompt),
            Segment("model", protocol.spawn_block(messages)),
            Segment("join", protocol.join_block([str(p) for p in products])),
            Segment("model", f"\n{sum_line}\n{ANSWER_PREFIX} {answer}\n"),
        ],
        stop="eos",
    )
    threads = [root]
    for message, (count, _, size), product in zip(messages, groups, products):
        threads.append(
            Thread(
                parent=0,
                stop="return",
                segments=[
                    Segment("prompt", protocol.child_prompt(message)),
                    Segment("model", f" -> {count}*{size}={product} " + protocol.return_block(str(product))),
                ],
            )
        )
        root.children.append(len(threads) - 1)
    return ThreadTree(problem={"answer": answer}, threads=threads)


def multiverse_line(tree: ThreadTree) -> dict[str, object]:
    """``tree``'s problem as a Multiverse-style line: prompt, answer and the
    tagged response (the paths' work, then the conclusion and the answer)."""
    root, children = tree.threads[0], tree.threads[1:]
    outlines = "".join(f"<Outline>{c.segments[0].text.removeprefix(protocol.CHILD)}</Outline>" for c in children)
    paths = "".join(f"<Path>{c.written_text.split(protocol.RETURN_OPEN)[0].strip(' ->')}</Path>" for c in children)
    sum_line, answer_line = root.segments[-1].text.strip().split("\n")
    text = f"<Parallel><Goal>{outlines}</Goal>{paths}<Conclusion>{sum_line}</Conclusion></Parallel>\n{answer_line}\n"
    return {"prompt": root.segments[0].text, "answer": tree.problem["answer"], "text": text}


def write_splits(out: str, sizes: dict[str, int], seed: int = 0, fmt: str = "tree") -> dict[str, str]:
    """Write unique problems per split (no prompt in two splits) in ``fmt``
    (``FORMATS``); returns the paths."""
    rng = random.Random(seed)
    seen: set[str] = set()
    os.makedirs(out, exist_ok=True)
    paths = {}
    for split in ("test", "validation", "train"):  # held-out splits first, as Countdown draws them
        trees = []
        while len(trees) < sizes[split]:
            tree = make_tree(rng)
            prompt = tree.threads[0].segments[0].text
            if prompt not in seen:
                seen.add(prompt)
                trees.append(tree)
        paths[split] = os.path.join(out, f"{split}.jsonl")
        if fmt == "multiverse":
            write_jsonl(paths[split], [multiverse_line(tree) for tree in trees])
        else:
            write_jsonl(paths[split], trees)
    return paths


COMMAND = Command(
    "python -m apr_jax.tasks.examples.arithmetic",
    "Write arithmetic word problems with a parallel decomposition as ThreadTree JSONL splits.",
    flags=(
        Flag("out", "directory for train/validation/test.jsonl", value="DIR", required=True),
        Flag("seed", "random seed (default 0)", value="N"),
        Flag(
            "format",
            f"{' or '.join(FORMATS)}: ThreadTree JSON or Multiverse-style tagged text (default tree)",
            value="FORMAT",
        ),
        *(Flag(split, f"{split} problems (default {size})", value="N") for split, size in SPLIT_SIZES.items()),
    ),
    examples=(
        "python -m apr_jax.tasks.examples.arithmetic --out examples/arithmetic",
        "python -m apr_jax.tasks.examples.arithmetic --out examples/arithmetic_mv --format=multiverse",
    ),
)


def _integer(flags: dict[str, str], name: str, default: int, *, count: bool = True) -> int:
    raw = flags.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"--{name} must be an integer, got {raw!r}") from None
    if count and value < 0:
        raise UsageError(f"--{name} must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        flags = read_command_line(argv, COMMAND).flags
        sizes = {split: _integer(flags, split, size) for split, size in SPLIT_SIZES.items()}
        fmt = flags.get("format", "tree")
        if fmt not in FORMATS:
            raise UsageError(f"--format={fmt} is not one of {', '.join(FORMATS)}")
        paths = write_splits(flags["out"], sizes, _integer(flags, "seed", 0, count=False), fmt)
        print(f"wrote {', '.join(paths.values())}", file=sys.stderr)

    return run_command(body, usage=(OSError,), compile_cache=False)


if __name__ == "__main__":
    sys.exit(main())
