"""Inherit-family tagged text (Multiverse, ThreadWeaver): text <-> thread tree,
the errors it reports, and the jsonl_traces task reading it."""

from __future__ import annotations

import json
import random
import re
import types

import pytest

from apr_jax.config.sections import TaskConfig
from apr_jax.tasks.jsonl_traces import JsonlTracesTask, TextProblem
from apr_jax.tasks.tagged_text import FORMATS, parse_tagged_line, text_to_tree, tree_to_text
from apr_jax.threads import Segment, Thread, ThreadTree

# (outlines-list tag, path tag) per format, spelled out here rather than read from FORMATS.
TAGS = {"multiverse": ("Goal", "Path"), "threadweaver": ("Outlines", "Thread")}
WORDS = ("so", "x = 3", "try 4*5", "check\n", "then", "<Conclusion>", "a < b", "20 > 7", "")


def _words(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3)))


def _block(rng: random.Random, fmt: str, depth: int) -> str:
    header, path = TAGS[fmt]
    n = rng.randint(1, 4)
    outlines = "".join(f"<Outline>{_words(rng)}</Outline>" for _ in range(n))
    paths = "".join(f"<{path}>{_body(rng, fmt, depth)}</{path}>" for _ in range(n))
    conclusion = f"<Conclusion>{_words(rng)}</Conclusion>" if fmt == "multiverse" and rng.random() < 0.7 else ""
    return f"<Parallel><{header}>{outlines}</{header}>{paths}{conclusion}</Parallel>"


def _body(rng: random.Random, fmt: str, depth: int) -> str:
    """Text with 0-2 blocks (none at depth 2), text before, between and after."""
    parts = [_words(rng)]
    for _ in range(rng.randint(0, 2) if depth < 2 else 0):
        parts += [_block(rng, fmt, depth + 1), _words(rng)]
    return "".join(parts)


def _canonical_texts(fmt: str, count: int = 200) -> list[str]:
    rng = random.Random(fmt)
    return [_words(rng) + _block(rng, fmt, 1) + _body(rng, fmt, 0) + "Answer: 5" for _ in range(count)]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_is_exact_on_canonical_texts(fmt):
    texts = _canonical_texts(fmt)
    _, path = TAGS[fmt]
    assert any(t.count("<Parallel>") >= 3 for t in texts)  # nested and repeated blocks are covered
    for text in texts:
        tree = text_to_tree("Q: what?\n", text, "5", fmt, 2)
        tree.validate()
        assert tree_to_text(tree, fmt) == text
        assert len(tree.threads) == 1 + text.count(f"<{path}>")
        assert tree.threads[0].segments[0] == Segment("prompt", "Q: what?\n") and tree.threads[0].stop == "eos"
        for thread in tree.threads[1:]:
            assert thread.stop == "return" and thread.segments[0].text.startswith("<child>")
            assert thread.segments[-1].role == "model" and thread.segments[-1].text.endswith("</return>")
        for thread in tree.threads:
            assert all(s.text for s in thread.segments[1:])  # no empty segments
            assert thread.children == sorted(thread.children)


HAND = (
    "Plan.<Parallel><Goal><Outline>a</Outline><Outline>b</Outline></Goal>"
    "<Path>x<Parallel><Goal><Outline>c</Outline></Goal><Path>y</Path><Conclusion>z</Conclusion></Parallel>w</Path>"
    "<Path>q</Path><Conclusion>C</Conclusion></Parallel>Answer: 5"
)


def test_hand_written_tree_structure():
    tree = text_to_tree("P", HAND, "5", "multiverse", 2)
    assert tree.problem == {"prompt": "P", "answer": "5"}
    assert tree.threads == [
        Thread(
            -1,
            [
                Segment("prompt", "P"),
                Segment("model", "Plan.<spawn>a<sep>b</spawn>"),
                Segment("join", "<join>"),
                Segment("model", "<Conclusion>C</Conclusion></Parallel>Answer: 5"),
            ],
            children=[1, 3],
            stop="eos",
        ),
        Thread(
            0,
            [
                Segment("prompt", "<child>a"),
                Segment("model", "x<spawn>c</spawn>"),
                Segment("join", "<join>"),
                Segment("model", "<Conclusion>z</Conclusion></Parallel>w</return>"),
            ],
            children=[2],
            stop="return",
        ),
        Thread(1, [Segment("prompt", "<child>c"), Segment("model", "y</return>")], stop="return"),
        Thread(0, [Segment("prompt", "<child>b"), Segment("model", "q</return>")], stop="return"),
    ]
    assert tree_to_text(tree, "multiverse") == HAND


def test_threadweaver_tree_and_two_blocks_in_one_thread():
    text = (
        "<Parallel><Outlines><Outline>a</Outline></Outlines><Thread>p</Thread></Parallel>mid"
        "<Parallel><Outlines><Outline>b</Outline><Outline></Outline></Outlines><Thread></Thread><Thread>r</Thread>"
        "</Parallel>"
    )
    tree = text_to_tree("P", text, "1", "threadweaver", 1)
    assert [s.text for s in tree.threads[0].segments] == [
        "P",
        "<spawn>a</spawn>",
        "<join>",
        "</Parallel>mid<spawn>b<sep></spawn>",
        "<join>",
        "</Parallel>",
    ]
    assert [t.segments[1].text for t in tree.threads[1:]] == ["p</return>", "</return>", "r</return>"]
    assert [t.segments[0].text for t in tree.threads[1:]] == ["<child>a", "<child>b", "<child>"]
    assert tree_to_text(tree, "threadweaver") == text


def test_whitespace_between_structural_tags_is_dropped():
    spaced = (
        "Plan.<Parallel>\n <Goal>\n<Outline>a</Outline> \n<Outline>b</Outline>\n</Goal>\n\n"
        "<Path>x<Parallel> <Goal> <Outline>c</Outline> </Goal> <Path>y</Path>"
        "<Conclusion>z</Conclusion></Parallel>w</Path>"
        "\n  <Path>q</Path><Conclusion>C</Conclusion></Parallel>Answer: 5"
    )
    assert text_to_tree("P", spaced, "5", "multiverse", 2) == text_to_tree("P", HAND, "5", "multiverse", 2)


def _mv(outlines: str, paths: str, after: str = "</Parallel>") -> str:
    return f"<Parallel><Goal>{outlines}</Goal>{paths}{after}"


ERRORS = [
    (_mv("<Outline>a</Outline>", "<Path>b", ""), "<Path> is never closed by </Path>"),
    (
        _mv("<Outline>a</Outline>", "<Path>b", "<Conclusion>c</Conclusion></Parallel>"),
        "<Path> is not closed by </Path> before </Parallel>",
    ),
    (
        _mv("<Outline>a</Outline>", "<Path>b</Path>", "<Conclusion>c</Conclusion>"),
        "<Parallel> is never closed by </Parallel>",
    ),
    ("<Parallel><Goal><Outline>a</Outline><Path>b</Path></Parallel>", "<Goal> is not closed by </Goal> before <Path>"),
    ("<Parallel><Goal><Outline>a</Outline>", "<Goal> is never closed by </Goal>"),
    ("<Parallel><Goal><Outline>a</Goal>", "<Outline> is not closed by </Outline> before </Goal>"),
    ("x</Path>", "</Path> has no opening <Path>"),
    ("x</Parallel>", "</Parallel> has no opening <Parallel>"),
    ("x<Path>y</Path>", "<Path> outside a <Parallel> block"),
    ("x<Outline>y</Outline>", "<Outline> outside a <Parallel><Goal> header"),
    ("<Parallel><Outline>a</Outline>", "<Parallel> must be followed by <Goal>, found '<Outline>'"),
    (
        _mv("<Outline>a</Outline><Outline>b</Outline>", "<Path>1</Path><Path>2</Path><Path>3</Path>"),
        "3 <Path> blocks for 2 <Outline>s",
    ),
    (_mv("<Outline>a</Outline><Outline>b</Outline>", ""), "0 <Path> blocks for 2 <Outline>s"),
    (_mv("", "<Path>1</Path>"), "<Goal> has no <Outline>"),
    (_mv("<Outline>a</Outline>so<Outline>b</Outline>", ""), "text 'so' between <Outline>s in <Goal>"),
    (_mv("<Outline>a</Outline>", "so<Path>1</Path>"), "text 'so' between </Goal> and the first <Path>"),
    ("<Parallel>so<Goal>", "text 'so' between <Parallel> and <Goal>"),
    (
        _mv("<Outline>a</Outline><Outline>b</Outline>", "<Path>1</Path>so<Path>2</Path>"),
        "text 'so' between <Path> blocks",
    ),
    ("x<spawn>y</spawn>", "text contains the reserved protocol token '<spawn>'"),
    ("x</return>", "text contains the reserved protocol token '</return>'"),
]


@pytest.mark.parametrize("text, message", ERRORS)
def test_errors_name_the_tag(text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        text_to_tree("P", text, "1", "multiverse", 2)


def test_nesting_deeper_than_max_depth():
    inner = _mv("<Outline>c</Outline>", "<Path>y</Path>")
    text = _mv("<Outline>a</Outline>", f"<Path>{_mv('<Outline>b</Outline>', f'<Path>{inner}</Path>')}</Path>")
    assert len(text_to_tree("P", text, "1", "multiverse", 3).threads) == 4
    with pytest.raises(ValueError, match=r"^<Parallel> nesting depth 3 exceeds max_depth 2$"):
        text_to_tree("P", text, "1", "multiverse", 2)
    with pytest.raises(ValueError, match=r"nesting depth 1 exceeds max_depth 0"):
        text_to_tree("P", inner, "1", "multiverse", 0)


def test_threadweaver_errors_use_its_tags_and_prompt_is_checked():
    with pytest.raises(ValueError, match=r"^<Thread> is never closed by </Thread>$"):
        text_to_tree("P", "<Parallel><Outlines><Outline>a</Outline></Outlines><Thread>b", "1", "threadweaver", 2)
    with pytest.raises(ValueError, match=r"^<Outlines> has no <Outline>$"):
        text_to_tree("P", "<Parallel><Outlines></Outlines></Parallel>", "1", "threadweaver", 2)
    with pytest.raises(ValueError, match=r"^prompt contains the reserved protocol token '<child>'$"):
        text_to_tree("<child>P", "x", "1", "threadweaver", 2)
    with pytest.raises(ValueError, match=r"^tagged format 'xml' is not one of multiverse, threadweaver$"):
        text_to_tree("P", "x", "1", "xml", 2)


@pytest.mark.parametrize(
    "value, message",
    [
        ([1], "line must be an object with 'prompt', 'answer' and 'text', got list"),
        ({"prompt": "P", "answer": 1}, "line is missing key 'text'"),
        ({"prompt": "P", "text": "x"}, "line is missing key 'answer'"),
        ({"prompt": 3, "answer": 1, "text": "x"}, "'prompt' must be a non-empty string, got 3"),
        ({"prompt": "P", "answer": 1, "text": ""}, "'text' must be a non-empty string, got ''"),
        ({"prompt": "P", "answer": True, "text": "x"}, "'answer' must be a string or a number, got bool"),
    ],
)
def test_bad_lines(value, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        parse_tagged_line(value, "multiverse", 2)


def _write(path, lines) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _config(**task) -> types.SimpleNamespace:
    """What ``from_config`` reads: a config whose ``task`` section holds ``task``."""
    return types.SimpleNamespace(task=TaskConfig("jsonl_traces", task))


def test_task_reads_multiverse_files(tmp_path):
    block = _mv("<Outline>a</Outline>", "<Path>b</Path>")
    lines = [{"prompt": f"Q{i}", "answer": i, "text": f"{block}\nAnswer: {i}"} for i in range(3)]
    train = _write(tmp_path / "train.jsonl", lines)
    test = _write(tmp_path / "test.jsonl", lines[:1])
    config = _config(train=train, test=test, checker="numeric", answer_prefix="Answer:", format="multiverse")
    task = JsonlTracesTask.from_config(config)
    assert task.contexts(config.task.as_dict()) == ("inherit",) and task.max_depth == 2
    assert task.splits() == {
        "train": [TextProblem("Q0", "0"), TextProblem("Q1", "1"), TextProblem("Q2", "2")],
        "validation": [],
        "test": [TextProblem("Q0", "0")],
    }
    tree = task.trees()["train"][1]
    assert isinstance(tree, ThreadTree) and tree.threads[1].segments[1].text == "b</return>"
    assert task.score(tree.threads[0].written_text, TextProblem("Q1", "1")).ok
    assert JsonlTracesTask.contexts({"name": "jsonl_traces", "train": train}) == ("message",)
    assert JsonlTracesTask.contexts({"format": "threadweaver"}) == ("inherit",)


def test_task_reports_the_bad_line_and_settings(tmp_path):
    good = {"prompt": "Q", "answer": 1, "text": _mv("<Outline>a</Outline>", "<Path>b</Path>")}
    bad = {"prompt": "Q", "answer": 1, "text": _mv("<Outline>a</Outline>", "<Path>b", "")}
    path = _write(tmp_path / "train.jsonl", [good, good, bad])
    task = JsonlTracesTask.from_config(_config(train=path, format="multiverse", max_depth=1))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: <Path> is never closed by </Path>") + "$"):
        task.trees()
    with pytest.raises(ValueError, match=r"^config.task.format='xml' is not one of tree, multiverse, threadweaver$"):
        JsonlTracesTask.check_settings({"train": path, "format": "xml"})
    with pytest.raises(ValueError, match=r"^config.task.format='xml' is not one of tree, multiverse, threadweaver$"):
        JsonlTracesTask({"train": path, "validation": "", "test": ""}, trace_format="xml")
    for depth in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"^config.task.max_depth must be a positive integer"):
            JsonlTracesTask.check_settings({"format": "threadweaver", "max_depth": depth})
