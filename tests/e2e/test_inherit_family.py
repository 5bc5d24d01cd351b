"""The inherit family end to end on the CPU: a 200-line Multiverse-style JSONL
written here round-trips exactly (text -> tree -> text), trains as tree
sequences through the whole pipeline (dataset, grain rows, train step) and is
evaluated by the engine in stitch mode."""

import json
import os

import numpy as np
from helpers.paths import CONFIGS

from apr_jax.config.loading import load_run_config
from apr_jax.data.build import build_dataset
from apr_jax.data.pipeline import make_iterator
from apr_jax.tasks.examples.arithmetic import write_splits
from apr_jax.tasks.registry import get_task
from apr_jax.tasks.tagged_text import tree_to_text
from apr_jax.training.run import run_training


def test_multiverse_jsonl_round_trips_and_trains(tmp_path):
    paths = write_splits(str(tmp_path / "mv"), {"train": 200, "validation": 8, "test": 8}, seed=3, fmt="multiverse")
    config = load_run_config(
        os.path.join(CONFIGS, "arithmetic_multiverse.py"),
        [
            *(f"task.{split}={path}" for split, path in paths.items()),
            f"data.dir={tmp_path / 'data'}",
            "data.num_workers=1",
            "data.seq_len=192",
            "model.max_len=192",
            "model.num_layers=2",
            "model.d_model=32",
            "model.num_heads=2",
            "model.num_kv_heads=1",
            "model.d_ff=64",
            "train.batch_size=8",
            "train.steps=4",
            "train.log_every=2",
            "train.eval_every=4",
            "train.eval_batches=1",
            "train.checkpoint_every=4",
            "eval.num_problems=8",
            "eval.row_buckets=1",
            "eval.kv_buckets=1",
        ],
    )
    lines = [json.loads(line) for line in open(paths["train"])]
    trees = get_task(config).trees()["train"]
    assert len(lines) == len(trees) == 200
    assert [tree_to_text(tree, "multiverse") for tree in trees] == [line["text"] for line in lines]

    info = build_dataset(config, log=None)
    batch = next(make_iterator(config, info, "train", batch_size=8))
    assert batch["hidden_from"].shape == (8, 192, 4)
    # Sibling paths share positions: some position repeats inside a tree.
    row = batch["positions"][0][batch["segment_ids"][0] == 1]
    assert len(np.unique(row)) < len(row)

    last = run_training(config, str(tmp_path / "run"))
    assert last["step"] == 4 and np.isfinite(last["loss"]) and 0.0 <= last["test_accuracy"] <= 1.0
    rows = [json.loads(line) for line in open(tmp_path / "run" / "results_test.jsonl")]
    assert len(rows) == 8
    for row in rows:  # each decoded tree keeps its threads' own text: no child repeats the prompt
        threads = row["tree"]["threads"]
        assert all(not t["segments"] or t["segments"][0]["text"].startswith("<child>") for t in threads[1:])
