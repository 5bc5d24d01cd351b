"""The default demo on a machine where only a share of its steps fit its time
limit: the step budget (the schedule anneals at the last step that fits)
against the hard stop (the schedule planned for every step, cut off) and the
full run.

    python -m benchmarks.time_budget [--share 0.75] [--workdir runs/time_budget] [--probe-minutes M]

Each run is the default config with its time limit off, so the figures do not
depend on this machine's speed; the budget is given to a run by writing the
``step_budget.json`` that a time-limited run's probe would write:

- ``full``: every step (``train.steps``);
- ``budget``: ``share`` of the steps, planned before the first step, so the
  learning rate anneals at the last one (what ``apr_jax.training.step_budget`` does);
- ``hard stop``: the same steps with the schedule still planned for every
  step, the behaviour of a time limit without a step budget.

``--probe-minutes M`` adds a run with the real time limit of M minutes,
whose probe measures this machine and plans the budget itself.
Each run ends with the held-out evaluation on the whole test split.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from apr_jax.config.loading import load_run_config
from apr_jax.training.optim import learning_rate_schedule
from apr_jax.training.run import run_training
from apr_jax.training.step_budget import StepBudget, read_budget, write_budget


def run_one(name: str, overrides: list[str], workdir: str, budget: StepBudget | None) -> dict:
    config = load_run_config(None, overrides)
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise SystemExit(f"error: {workdir} holds a run already; pass another --workdir")
    if budget is not None:
        write_budget(workdir, budget)
    start = time.time()
    last = run_training(config, workdir)
    planned = read_budget(workdir)
    steps = planned.steps if planned else config.train.steps
    schedule_end = planned.schedule_steps(steps - 1) if planned else config.train.steps
    return {
        "run": name,
        "steps": last["step"],
        "schedule_end": schedule_end,
        "last_lr": float(learning_rate_schedule(config.train)(steps - 1, schedule_end)),
        "test_accuracy": last.get("test_accuracy"),
        "seconds": round(time.time() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.75, help="share of train.steps that fit")
    parser.add_argument("--workdir", default="runs/time_budget", help="one folder per run below it")
    parser.add_argument("--probe-minutes", type=float, default=0.0, help="also run with this real time limit (0: skip)")
    parser.add_argument(
        "--runs", default="full,budget,hard_stop", help="which of full, budget, hard_stop to run (comma-separated)"
    )
    args = parser.parse_args(argv)
    base = ["config.eval.num_problems=200", "config.train.time_limit_minutes=0"]
    steps = load_run_config(None, base).train.steps
    cut = int(round(args.share * steps))
    plans = {
        "full": None,
        "budget": StepBudget(steps=cut, decided_at=0, seconds_per_step=0.0, configured_steps=steps),
        "hard_stop": StepBudget(steps=cut, decided_at=cut, seconds_per_step=0.0, configured_steps=steps),
    }
    rows = []
    for name in args.runs.split(","):
        rows.append(run_one(name, base, os.path.join(args.workdir, name), plans[name]))
    if args.probe_minutes > 0:
        probe = [*base[:1], f"config.train.time_limit_minutes={args.probe_minutes}"]
        rows.append(run_one(f"probe_{args.probe_minutes:g}min", probe, os.path.join(args.workdir, "probe"), None))
    print(f"\ndefault demo, {args.share:.0%} of {steps} steps; accuracy on the 200 test problems:")
    print(f"{'run':<16} {'steps':>6} {'schedule ends':>14} {'last lr':>10} {'test accuracy':>14} {'seconds':>8}")
    for r in rows:
        acc = f"{r['test_accuracy']:.1%}" if r["test_accuracy"] is not None else "-"
        print(
            f"{r['run']:<16} {r['steps']:>6} {r['schedule_end']:>14} {r['last_lr']:>10.2e} {acc:>14} {r['seconds']:>8}"
        )
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
