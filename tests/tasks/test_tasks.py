"""The task interface: Countdown behind it unchanged, the jsonl_traces task
(checkers, file errors, dataset, evaluation by replaying its own traces), and
the worked example end to end from a converted pretrained checkpoint."""

import json
import os

import ml_collections
import pytest
from helpers.paths import REPO_ROOT

from apr_jax.config import loading as config_lib
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RLConfig, RunConfig, section_defaults
from apr_jax.data.build import build_dataset, config_hash, make_problem_source
from apr_jax.data.tokenizer import load_tokenizer
from apr_jax.decode.replay_model import make_replay_model
from apr_jax.evaluation.scoring import evaluate_problems
from apr_jax.tasks.checkers import final_answer_line, make_checker
from apr_jax.tasks.countdown.task import CountdownTask
from apr_jax.tasks.examples.arithmetic import make_tree, write_splits
from apr_jax.tasks.jsonl_traces import JsonlTracesTask, TextProblem
from apr_jax.tasks.registry import get_task
from apr_jax.threads import ThreadTree

ROOT = REPO_ROOT
EXAMPLE = os.path.join(ROOT, "configs", "arithmetic_traces.py")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hf")


def test_countdown_is_the_default_task_and_keeps_its_data_hash():
    config = load_run_config(None, ["task.num_train=50"])
    assert config.task.name == "countdown" and isinstance(get_task(config), CountdownTask)
    unnamed = config.to_dict()  # a config from before tasks had names
    del unnamed["task"]["name"]
    assert config_hash(RunConfig.from_config(unnamed)) == config_hash(config)
    task = get_task(config)
    problem = task.splits()["test"][0]
    assert task.prompt(problem) == " ".join(map(str, problem.numbers)) + f" -> {problem.target}\n"
    assert task.score("ans 3*4=12 12+5=17", type(problem)((3, 4, 5), 17)).ok
    wrong = task.score("ans 3+4=7 7+5=12", type(problem)((3, 4, 5), 17))
    assert wrong.reward == 0.0 and wrong.reason == "reaches 12, not the target 17"


def test_unknown_task_name_is_a_config_error():
    with pytest.raises(ConfigError, match="config.task.name='gsm' is not one of countdown, jsonl_traces"):
        config_lib.load_config(None, ["task.name=gsm"])


def test_answer_line_and_built_in_checkers():
    text = "<spawn>a<sep>b</spawn>\n36+20=56\nAnswer: 56\n"
    assert final_answer_line(text, "Answer:") == "56"
    assert final_answer_line(text) == "Answer: 56"
    assert final_answer_line("<spawn>a</spawn>", "") is None
    assert final_answer_line("no marker here", "Answer:") is None
    numeric, exact = make_checker("numeric", "Answer:"), make_checker("exact", "Answer:")
    assert numeric("Answer: 1,200.0", {"answer": 1200}).ok
    assert numeric("Answer: 3/4", {"answer": "0.75"}).ok
    assert numeric("Answer: 57", {"answer": 56}).reason == "answer 57 is not 56"
    assert numeric("Answer: many", {"answer": 56}).reason == "answer 'many' is not a number"
    assert numeric("56", {"answer": 56}).reason == "no answer line"
    assert exact("Answer: Paris ", {"answer": "Paris"}).ok
    assert not exact("Answer: paris", {"answer": "Paris"}).ok


def test_user_checker_from_config(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(
        "def half(text, problem):\n    return (0.5, 'close') if problem['answer'] in text else False\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check = make_checker("my_checks:half", "Answer:")
    score = check("Answer: 42", {"prompt": "q", "answer": "42"})
    assert (score.reward, score.reason, score.answer) == (0.5, "close", "42") and not score.ok
    assert check("Answer: 7", {"prompt": "q", "answer": "42"}).reward == 0.0
    with pytest.raises(ValueError, match=r"config.task.checker='my_checks:nope': my_checks has no function nope"):
        make_checker("my_checks:nope")
    with pytest.raises(ValueError, match=r"config.task.checker='nowhere:f': cannot import nowhere"):
        make_checker("nowhere:f")
    with pytest.raises(
        ValueError, match=r"config.task.checker='fuzzy' is not one of exact, numeric or module:function"
    ):
        make_checker("fuzzy")


def _task_files(tmp_path, lines):
    write_splits(str(tmp_path), {"train": 4, "validation": 2, "test": 2}, seed=1)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return JsonlTracesTask({"train": str(path), "validation": "", "test": ""}, "numeric", "Answer:"), str(path)


def _tree_dict(edit):
    import random

    d = make_tree(random.Random(0)).to_dict()
    edit(d)
    return json.dumps(d)


def _never_returns(d):
    d["threads"][1]["segments"][1]["text"] = " -> 2*3=6"
    d["threads"][1]["stop"] = "token_limit"


def _wrong_join(d):
    d["threads"][0]["segments"][2]["text"] = "<join>1<sep>2</join>"


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [
                "{",
            ],
            r"bad.jsonl:1: bad JSON \(Expecting property name enclosed in double quotes\)",
        ),
        (
            [_tree_dict(lambda d: None), _tree_dict(_never_returns)],
            r"bad.jsonl:2: thread 1 never returns: a child must end with <return>...</return> and stop "
            r"'return' \(got stop 'token_limit'\)",
        ),
        (
            [_tree_dict(lambda d: d["problem"].pop("answer"))],
            r"bad.jsonl:1: problem is missing key 'answer' \(the reference answer\)",
        ),
        ([_tree_dict(_wrong_join)], r"bad.jsonl:1: thread 0's join segments .* are not its children's return"),
        (
            [_tree_dict(lambda d: d["threads"][0]["children"].pop())],
            r"bad.jsonl:1: not a valid thread tree: thread \d is missing from parent 0's children",
        ),
        (
            [_tree_dict(lambda d: d["threads"][1]["segments"][0].update(text="<child>other"))],
            r"bad.jsonl:1: thread 1 must start with the prompt segment",
        ),
        (
            [_tree_dict(lambda d: d["threads"][0].update(stop="token_limit"))],
            r"bad.jsonl:1: thread 0 \(the root\) must stop with 'eos', got 'token_limit'",
        ),
    ],
)
def test_bad_trace_files_name_the_line_and_the_rule(tmp_path, lines, message):
    task, path = _task_files(tmp_path, lines)
    with pytest.raises(ValueError, match=message) as e:
        task.splits()
    assert str(e.value).startswith(path) and "\n" not in str(e.value)


def jsonl_config(tmp_path, *overrides):
    paths = write_splits(str(tmp_path / "traces"), {"train": 24, "validation": 4, "test": 6}, seed=2)
    return load_run_config(
        EXAMPLE,
        [
            *(f"task.{s}={p}" for s, p in paths.items()),
            f"data.dir={tmp_path / 'data'}",
            "data.num_workers=1",
            "eval.row_buckets=1",
            "eval.kv_buckets=1",
            *overrides,
        ],
    )


def test_replayed_reference_traces_score_full_marks(tmp_path):
    """The engine replaying the task's own traces, scored by its checker:
    prompts, dataset and verifier agree."""
    config = jsonl_config(tmp_path)
    info = build_dataset(config, log=None)
    assert info.task == "jsonl_traces" and info.counts == {"train": 24, "validation": 4, "test": 6}
    problems = make_problem_source(info, "test")
    assert all(isinstance(p, TextProblem) for p in problems)
    tok = load_tokenizer(info.tokenizer_path)
    trees = [ThreadTree.from_json(line) for line in open(config.task.test)]
    sequences = [s.tokens for t in trees for s in t.to_sequences(tok)]
    model = make_replay_model(
        sequences, vocab_size=tok.vocab_size, max_len=config.model.max_len, fallback_id=tok.eos_id
    )
    rows, summary = evaluate_problems(model, tok, config, problems)
    assert summary["accuracy"] == 1.0 and summary["well_formed"] == 1.0
    assert summary["mean_children_per_spawn"] == pytest.approx(sum(len(t.threads) - 1 for t in trees) / len(trees))
    assert [r["final_answer"] for r in rows] == [str(t.problem["answer"]) for t in trees]
    assert [r["prompt"] for r in rows] == [t.threads[0].segments[0].text for t in trees]

    # A changed trace file is another dataset.
    with open(config.task.test, "a") as f:
        f.write(make_tree(__import__("random").Random(9)).to_json() + "\n")
    assert config_hash(config) != info.config_hash


@pytest.mark.slow
def test_worked_example_from_a_converted_checkpoint(tmp_path):
    """docs/tasks.md, "The worked example": convert a tiny Qwen3, SFT on the
    arithmetic traces, evaluate with the numeric checker, one GRPO step."""
    from apr_jax import convert
    from apr_jax.rl.train_rl import run_rl
    from apr_jax.training.sft import run_sft

    out = tmp_path / "qwen3"
    base = ml_collections.ConfigDict(jsonl_config(tmp_path, "data.seq_len=64").to_dict())
    convert.convert(os.path.join(FIXTURES, "qwen3"), str(out), base)
    run = [
        "model.max_len=192",
        "data.seq_len=192",
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=100",
        "train.eval_batches=1",
        "train.checkpoint_every=2",
        "eval.num_problems=3",
        "eval.tokens_per_thread=24",
        "eval.row_buckets=1",
        "eval.kv_buckets=1",
    ]  # short engine compiles
    config = load_run_config(str(out / "config.py"), run)
    assert config.task.name == "jsonl_traces" and config.train.init_from == str(out)
    last = run_sft(config, str(tmp_path / "sft"))
    assert last["step"] == 2 and "test_accuracy" in last
    rows = [json.loads(line) for line in open(tmp_path / "sft" / "results_test.jsonl")]
    assert len(rows) == 3 and {"prompt", "answer", "final_answer", "solved", "reason", "tree"} <= set(rows[0])

    rl_overrides = [*run, "mode=rl", "train.steps=1", "train.grad_accum=1", "train.lr=1e-5"]
    rl_config = config_lib.load_config(str(out / "config.py"), rl_overrides)
    rl_config.rl = section_defaults(RLConfig)
    rl_config.rl.init_from = str(tmp_path / "sft")
    rl_config.rl.prompts_per_step, rl_config.rl.samples_per_prompt = 2, 2
    rl_config.rl.max_threads = 4
    rl_config.eval.max_rounds = 1
    result = run_rl(RunConfig.from_config(rl_config), str(tmp_path / "rl"))
    assert result["step"] == 1 and 0.0 <= result["reward"] <= 1.0


def test_docs_tasks_md_two_thread_example_is_a_valid_trace():
    from apr_jax.tasks.jsonl_traces import parse_tree, problem_of

    with open(os.path.join(ROOT, "docs", "tasks.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## The trace format") :]
    block = section[section.index("```json\n") + 8 : section.index("```", section.index("```json\n") + 8)]
    tree = parse_tree(json.loads(block))
    assert len(tree.threads) == 2
    task = JsonlTracesTask({"train": "", "validation": "", "test": ""}, "numeric", "Answer:")
    assert task.score(tree.threads[0].written_text, problem_of(tree)).ok


def test_streamed_traces_need_a_task_that_generates_them(tmp_path):
    config = jsonl_config(tmp_path, "data.traces=streamed")
    with pytest.raises(
        ValueError, match="data.traces='streamed' generates each trace when it is read, but task 'jsonl_traces' reads"
    ) as e:
        build_dataset(config, log=None)
    assert "\n" not in str(e.value) and not os.listdir(tmp_path / "data")


# ---- oracle difficulty and mixed counts of numbers ------------------------------------


def test_countdown_difficulty_and_mixed_counts_from_the_command_line():
    """task.num_inputs=[3,4] overrides the default int: every split mixes both
    counts equally; the task's difficulty is one minus the stored share, or is
    computed for a problem without one; an int override turns it back."""
    from apr_jax.tasks.countdown.problems import Problem

    config = load_run_config(
        None, ["task.num_inputs=[3,4]", "task.num_train=40", "task.num_validation=6", "task.num_test=6"]
    )
    assert config.task.num_inputs == [3, 4]
    task = get_task(config)
    splits = task.splits()
    for problems in splits.values():
        sizes = [len(p.numbers) for p in problems]
        assert sizes.count(3) == sizes.count(4) == len(problems) // 2
    test = splits["test"]
    assert [task.difficulty(p) for p in test] == [1.0 - p.reachable_share for p in test]
    assert len({task.difficulty(p) for p in splits["train"]}) > 3
    assert task.difficulty(Problem((2, 3), 6)) == pytest.approx(2 / 3)
    assert task.difficulty({"numbers": [3, 1, 2], "target": 6}) == 3 / 8
    seen = {p.key for split in splits.values() for p in split}
    assert sorted(len(p.numbers) for p in task.unseen(4, seen)) == [3, 3, 4, 4]
    assert load_run_config(None, ["task.num_inputs=[3,4]", "task.num_inputs=4"]).task.num_inputs == 4


def test_a_config_file_may_mix_counts_of_numbers(tmp_path):
    path = tmp_path / "mixed.py"
    path.write_text(
        "from apr_jax.config.loading import DEFAULT_CONFIG, config_module\n\n\n"
        "def get_config():\n"
        "    c = config_module(DEFAULT_CONFIG).get_config()\n"
        "    del c.task.num_inputs  # a ConfigDict field keeps its type: an int here\n"
        "    c.task.num_inputs = [2, 3, 4]\n"
        "    return c\n"
    )
    assert config_lib.load_config(str(path)).task.num_inputs == [2, 3, 4]
    assert config_lib.load_config(str(path), ["task.num_inputs=3"]).task.num_inputs == 3
    assert config_lib.load_config(str(path), ["task.num_inputs=(3, 5)"]).task.num_inputs == [3, 5]


@pytest.mark.parametrize(
    "value, message",
    [
        ("[3, 9]", "config.task.num_inputs=[3, 9]: each count must be in [2, 6]"),
        ("[3,3]", "config.task.num_inputs=[3, 3]: each count must appear once"),
        ("[]", "config.task.num_inputs=[] must name at least one count"),
        ("[3, 'x']", "config.task.num_inputs=[3, 'x']: each count must be an integer"),
        ("1", "config.task.num_inputs=1 must be in [2, 6]"),
        ("three", "config.task.num_inputs: expected an integer or a list such as [3, 4], got 'three'"),
        ("{3: 4}", "config.task.num_inputs: expected an integer or a list such as [3, 4], got '{3: 4}'"),
    ],
)
def test_bad_counts_of_numbers_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError) as e:
        config_lib.load_config(None, [f"task.num_inputs={value}"])
    assert str(e.value) == message


def test_trace_files_have_no_oracle_difficulty():
    task = JsonlTracesTask({"train": "", "validation": "", "test": ""}, "exact", "Answer:")
    assert task.difficulty(TextProblem("2+2?", "4")) is None
