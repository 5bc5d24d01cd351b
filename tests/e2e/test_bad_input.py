"""Every row of the bad-input table in docs/errors.md, tried for real.

The table is the source of truth: each row's id names a case below, and the
message the case produces must equal the row's "What you see" column (with
``<tmp>`` for the test's temporary directory and ``<hash>`` for the dataset
cache name). A row without a case, or a case without a row, fails."""

import contextlib
import io
import os
import random
import re
import shutil

import jax
import jax.numpy as jnp
import pytest
from helpers.paths import HF_FIXTURES, REPO_ROOT

from apr_jax import evaluate, train
from apr_jax.config.loading import load_run_config
from apr_jax.data.build import build_dataset, config_hash
from apr_jax.data.pipeline import make_iterator
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.decode.engine import Engine, EngineConfig, to_thread_trees
from apr_jax.decode.model_api import DecodeModel
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import Checkpointer, encode_file
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.verifier import verify
from apr_jax.training import train_state
from apr_jax.training.workdir import check_workdir

ROOT = REPO_ROOT
DOC = os.path.join(ROOT, "docs", "errors.md")
TINY = [
    "config.task.num_train=240",
    "config.task.num_validation=16",
    "config.task.num_test=16",
    "config.model.num_layers=2",
    "config.model.d_model=32",
    "config.model.num_heads=2",
    "config.model.num_kv_heads=1",
    "config.model.d_ff=64",
    "config.model.max_len=128",
    "config.data.seq_len=128",
    "config.data.num_workers=1",
    "config.train.batch_size=8",
    "config.train.steps=2",
    "config.eval.num_problems=0",
]


def doc_rows() -> dict[str, str]:
    """Row id -> the "What you see" cell (backticks removed)."""
    rows = {}
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"\|\s*(B\d+)\s*\|.*\|\s*`(.*)`\s*\|\s*$", line)
            if match:
                rows[match.group(1)] = match.group(2).replace("\\|", "|")
    return rows


CASES = {}


def case(row_id):
    def register(fn):
        CASES[row_id] = fn
        return fn

    return register


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A tiny dataset and a workdir holding one checkpoint (untrained weights)."""
    root = tmp_path_factory.mktemp("bad")
    config = load_run_config(None, TINY + [f"config.data.dir={root}/data"])
    info = build_dataset(config, log=None)
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _, model, optimizer = train_state.build_model_and_optimizer(config, Tokenizer(info.tokenizer_path).vocab_size, mesh)
    _, state = train_state.split(model, optimizer)
    workdir = str(root / "run")
    check_workdir(workdir, config)
    checkpointer = Checkpointer(workdir)
    checkpointer.save(
        1,
        *state.checkpoint_trees(),
        make_iterator(config, info, "train", batch_size=8),
        {"config": config.to_dict(), "tokenizer_b64": encode_file(info.tokenizer_path)},
    )
    checkpointer.close()
    return {"root": str(root), "config": config, "info": info, "workdir": workdir, "hash": config_hash(config)}


def cli(main, argv):
    """Run a CLI entry point; its stderr, which must be exactly one line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue().strip()
    assert code != 0 and len(text.splitlines()) == 1, (code, text)
    return text


def train_cli(ctx, *extra, data_dir=None):
    data_dir = data_dir or f"{ctx['root']}/data"
    return cli(
        train.main,
        [f"--workdir={ctx['root']}/fresh"] + [f"--{o}" for o in TINY + [f"config.data.dir={data_dir}"]] + list(extra),
    )


def damaged_copy(ctx, name, remove):
    target = os.path.join(ctx["root"], name)
    if not os.path.exists(target):
        shutil.copytree(os.path.join(ctx["root"], "data"), target)
        path = os.path.join(target, ctx["hash"], remove)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return target


def problems_file(ctx, name, text):
    path = os.path.join(ctx["root"], name)
    with open(path, "w") as f:
        f.write(text)
    return cli(evaluate.main, [f"--workdir={ctx['workdir']}", f"--problems={path}", "--num=1"])


# ---- configs and flags -------------------------------------------------------
@case("B01")
def _(ctx):
    return train_cli(ctx, "--config.train.lrr=1")


@case("B02")
def _(ctx):
    return train_cli(ctx, "--config.train.steps=ten")


@case("B03")
def _(ctx):
    return train_cli(ctx, "--config.train.on_nan=ignore")


@case("B04")
def _(ctx):
    return train_cli(ctx, "--config.train.batch_size=0")


@case("B05")
def _(ctx):
    return train_cli(ctx, "--config.model=3")


@case("B06")
def _(ctx):
    return train_cli(ctx, "--config.data.seq_len=512")


@case("B07")
def _(ctx):
    return train_cli(ctx, "--workdirr=x")


@case("B08")
def _(ctx):
    return train_cli(ctx, "--config=configs/nope.py")


@case("B37")
def _(ctx):
    rl_config = os.path.join(ROOT, "configs", "default_rl.py")
    return train_cli(ctx, f"--config={rl_config}", "--config.rl.max_threads=5")


@case("B09")
def _(ctx):
    path = os.path.join(ctx["root"], "broken.py")
    with open(path, "w") as f:
        f.write("def get_config(:\n")
    return train_cli(ctx, f"--config={path}")


@case("B10")
def _(ctx):
    return train_cli(ctx, "--config.train.batch_size=12", "--config.mesh.data=8")


# ---- data files ----------------------------------------------------------------
@case("B11")
def _(ctx):
    return train_cli(ctx, data_dir=damaged_copy(ctx, "data_no_tok", "tokenizer.model"))


@case("B12")
def _(ctx):
    return train_cli(ctx, data_dir=damaged_copy(ctx, "data_no_tfds", "tfds"))


@case("B13")
def _(ctx):
    return problems_file(ctx, "p13.jsonl", '{"numbers":[1,2,3],"target":6}\n{"numbers":[1,\n')


@case("B14")
def _(ctx):
    return problems_file(ctx, "p14.jsonl", '{"numbers":[1,2,3]}\n')


@case("B15")
def _(ctx):
    return problems_file(ctx, "p15.jsonl", '{"numbers":[1,-2,3],"target":5}\n')


@case("B16")
def _(ctx):
    return cli(evaluate.main, [f"--workdir={ctx['workdir']}", f"--problems={ctx['root']}/missing.jsonl"])


# ---- workdirs and checkpoints ----------------------------------------------------
@case("B17")
def _(ctx):
    return cli(
        train.main,
        [f"--workdir={ctx['workdir']}"]
        + [f"--{o}" for o in TINY + [f"config.data.dir={ctx['root']}/data", "config.model.d_model=64"]],
    )


@case("B18")
def _(ctx):
    workdir = os.path.join(ctx["root"], "no_config_json")
    if not os.path.exists(workdir):
        shutil.copytree(ctx["workdir"], workdir)
        os.remove(os.path.join(workdir, "config.json"))
    return cli(
        train.main,
        [f"--workdir={workdir}"]
        + [f"--{o}" for o in TINY + [f"config.data.dir={ctx['root']}/data", "config.model.d_model=64"]],
    )


@case("B19")
def _(ctx):
    return cli(evaluate.main, [f"--workdir={ctx['root']}/nowhere"])


@case("B20")
def _(ctx):
    return cli(evaluate.main, [f"--checkpoint={ctx['workdir']}/checkpoints/7"])


@case("B21")
def _(ctx):
    return cli(evaluate.main, [f"--workdir={ctx['workdir']}", "--num=abc"])


# ---- pretrained checkpoints (python -m apr_jax.convert) ----------------------------
FIXTURES = HF_FIXTURES


def convert_cli(ctx, name, fixture="llama", config_changes=None, edit=None):
    """Convert a copy of a fixture with ``config.json`` changed and/or ``edit(dir)`` applied."""
    import json

    from apr_jax import convert

    target = os.path.join(ctx["root"], name)
    if not os.path.exists(target):
        shutil.copytree(os.path.join(FIXTURES, fixture), target)
        path = os.path.join(target, "config.json")
        with open(path) as f:
            raw = json.load(f)
        raw.update(config_changes or {})
        with open(path, "w") as f:
            json.dump(raw, f)
        if edit:
            edit(target)
    return cli(convert.main, [f"--hf_dir={target}", f"--out={target}_out", "--config.data.seq_len=64"])


def _extra_tensor(directory):
    import numpy as np

    from apr_jax.pretrained import safetensors_io

    path = os.path.join(directory, "model.safetensors")
    tensors = {k: np.asarray(v) for k, v in safetensors_io.open_file(path).items()}
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)
    safetensors_io.save_file(path, tensors)


def _foreign_tokenizer(directory):
    os.remove(os.path.join(directory, "tokenizer.model"))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, "qwen2", file), os.path.join(directory, file))


@case("B60")
def _(ctx):
    return convert_cli(ctx, "gpt2", config_changes={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


@case("B61")
def _(ctx):
    return convert_cli(ctx, "wide_mlp", config_changes={"intermediate_size": 64})


@case("B62")
def _(ctx):
    return convert_cli(ctx, "yarn", config_changes={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


@case("B63")
def _(ctx):
    return convert_cli(ctx, "extra_tensor", edit=_extra_tensor)


@case("B64")
def _(ctx):
    return convert_cli(ctx, "foreign_tokenizer", edit=_foreign_tokenizer)


@case("B65")
def _(ctx):
    return train_cli(ctx, f"--config.data.tokenizer={ctx['root']}/nope.apr.json")


# ---- your own traces (config.task.name=jsonl_traces) -------------------------------
def traces_cli(ctx, name, edit):
    """Train the worked example with its training file replaced by one
    reference tree per line, the last one changed by ``edit(tree dict)``."""
    import json

    from apr_jax.tasks.examples.arithmetic import make_tree

    path = os.path.join(ctx["root"], name)
    trees = [make_tree(random.Random(i)).to_dict() for i in range(3)]
    lines = [json.dumps(t) for t in trees[:2]] + [edit(trees[2])]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    example = os.path.join(ROOT, "configs", "arithmetic_traces.py")
    return cli(
        train.main,
        [
            f"--workdir={ctx['root']}/fresh_traces",
            f"--config={example}",
            f"--config.task.train={path}",
            f"--config.data.dir={ctx['root']}/data",
        ],
    )


def _child_cut_off(tree):
    import json

    child = tree["threads"][2]
    child["segments"][1]["text"] = " -> 9*8="
    child["stop"] = "token_limit"
    return json.dumps(tree)


@case("B66")
def _(ctx):
    return traces_cli(ctx, "t66.jsonl", _child_cut_off)


@case("B67")
def _(ctx):
    return traces_cli(ctx, "t67.jsonl", lambda tree: '{"problem": {"answer": 5}, "threads": [')


@case("B68")
def _(ctx):
    import json

    def drop_answer(tree):
        del tree["problem"]["answer"]
        return json.dumps(tree)

    return traces_cli(ctx, "t68.jsonl", drop_answer)


@case("B69")
def _(ctx):
    example = os.path.join(ROOT, "configs", "arithmetic_traces.py")
    return cli(
        train.main,
        [
            f"--workdir={ctx['root']}/fresh_traces",
            f"--config={example}",
            "--config.task.checker=my_checks.py",
            f"--config.data.dir={ctx['root']}/data",
        ],
    )


@case("B70")
def _(ctx):
    example = os.path.join(ROOT, "configs", "arithmetic_traces.py")
    return cli(
        train.main,
        [
            f"--workdir={ctx['root']}/fresh_traces",
            f"--config={example}",
            "--config.data.traces=streamed",
            f"--config.data.dir={ctx['root']}/data",
        ],
    )


def multiverse_cli(ctx, name, edit, *flags):
    """Train ``configs/arithmetic_multiverse.py`` on a file of two lines, the
    second one changed by ``edit`` (a function of its text)."""
    import json

    from apr_jax.tasks.examples.arithmetic import make_tree, multiverse_line

    path = os.path.join(ctx["root"], name)
    lines = [multiverse_line(make_tree(random.Random(i))) for i in range(2)]
    lines[1]["text"] = edit(lines[1]["text"])
    with open(path, "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    example = os.path.join(ROOT, "configs", "arithmetic_multiverse.py")
    return cli(
        train.main,
        [
            f"--workdir={ctx['root']}/fresh_multiverse",
            f"--config={example}",
            f"--config.task.train={path}",
            f"--config.data.dir={ctx['root']}/data",
            *flags,
        ],
    )


@case("B73")
def _(ctx):
    return multiverse_cli(ctx, "t73.jsonl", lambda text: text.replace("</Path>", "", 1))


@case("B74")
def _(ctx):
    return multiverse_cli(ctx, "t74.jsonl", lambda text: text.replace("</Path>", "</Path><Path>9</Path>", 1))


@case("B75")
def _(ctx):
    return multiverse_cli(ctx, "t75.jsonl", lambda text: text, "--config.data.context=message")


@case("B76")
def _(ctx):
    rl = os.path.join(ROOT, "configs", "countdown_inherit_rl.py")
    return cli(train.main, [f"--workdir={ctx['root']}/fresh_inherit", f"--config={rl}", "--config.train.grad_accum=48"])


@case("B71")
def _(ctx):
    return cli(
        train.main,
        [f"--workdir={ctx['workdir']}"]
        + [f"--{o}" for o in TINY + [f"config.data.dir={ctx['root']}/data", "config.data.pipeline_workers=2"]],
    )


@case("B72")
def _(ctx):
    return train_cli(ctx, "--config.data.pipeline_workers=-1")


# ---- adversarial answer text (verifier) ------------------------------------------
PROBLEM = Problem((3, 4, 5), 17)


def reason(text):
    verdict = verify(text, PROBLEM)
    assert not verdict.ok
    return verdict.reason


@case("B22")
def _(ctx):
    return reason("ans __import__('os').system('ls')")


@case("B23")
def _(ctx):
    return reason("ans 3**4=81")


@case("B24")
def _(ctx):
    return reason("ans " + "9" * 400 + "+1=2")


@case("B25")
def _(ctx):
    return reason("ans \uff13*4=12 12+5=17")


@case("B26")
def _(ctx):
    return reason("ans 3*4=12 12+5=17" + "x" * 2000)


@case("B27")
def _(ctx):
    return reason("ans 3*4=12 12+5=17 17-0=17")


@case("B28")
def _(ctx):
    return reason("ans 5/3=1")


@case("B29")
def _(ctx):
    return reason(None)


# ---- adversarial model output (engine) -------------------------------------------
def cycling_model(tokens, vocab=32):
    """A model that writes ``tokens`` over and over, whatever its context."""

    def decode(table, tokens_BxT, positions_BxT, cache, lanes_B, kv_len):
        nxt = table[jnp.clip(positions_BxT, 0, None) % table.shape[0]]
        return jax.nn.one_hot(nxt, vocab) * 10.0, cache

    return DecodeModel(jnp.asarray(tokens, jnp.int32), decode, lambda b, l: jnp.zeros((b, l)))


ENGINE = EngineConfig(max_children=2, max_rounds=2, max_depth=1, tokens_per_thread=10, max_context=32)


def engine_outcome(tokens):
    """What the engine reports for one root prompt: every thread's stop and
    the counters that are not zero; the thread tree must stay valid."""
    out = Engine(cycling_model(tokens), ENGINE).run([[20, 21]], jax.random.key(0))
    sample = out.samples[0][0]
    tree = to_thread_trees(out, _NullTokenizer(), [PROBLEM.to_dict()])[0]
    tree.validate()
    limits = {k: v for k, v in sample.limits_hit.items() if v}
    return f"stops={[t.stop for t in sample.threads]} limits={limits}"


class _NullTokenizer:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@case("B30")
def _(ctx):
    return engine_outcome([5])  # <spawn> forever, never closed


@case("B31")
def _(ctx):
    return engine_outcome([8, 9, 10, 11])  # engine-only <join>, </join>; <return> in the root


@case("B32")
def _(ctx):
    return engine_outcome([5, 7, 7, 7, 7, 6])  # five messages per spawn, two allowed


@case("B33")
def _(ctx):
    return engine_outcome([5, 5, 20, 6, 6])  # children try to spawn past max_depth


@case("B34")
def _(ctx):
    with pytest.raises(ValueError) as e:
        Engine(cycling_model([20]), ENGINE).run([list(range(13, 29)) * 2])
    return str(e.value)


@case("B35")
def _(ctx):
    with pytest.raises(ValueError) as e:
        EngineConfig(max_children=0)
    return str(e.value)


@case("B36")
def _(ctx):
    with pytest.raises(ValueError) as e:
        EngineConfig(max_children=4, max_depth=1, lanes=4)
    return str(e.value)


ROWS = doc_rows()
SHAPES_VARY = ("B18",)


def test_every_row_has_a_case_and_every_case_a_row():
    assert len(ROWS) >= 30
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_row(ctx, row_id):
    shown = CASES[row_id](ctx).replace(ctx["root"], "<tmp>").replace(ctx["hash"], "<hash>")
    expected = ROWS[row_id]
    if row_id in SHAPES_VARY:  # which mismatched array orbax reports first varies
        shown, expected = (re.sub(r"\(\d+(?:, \d+)*,?\)", "(...)", x) for x in (shown, expected))
    assert shown == expected
