"""launch/*.sh: the exact gcloud commands under --dry-run, one-line errors
before any gcloud call, --help, and the scripts at work on a fake slice of two
workers (tests/fake_slice.py: a gcloud that runs each ssh command in a sandbox
per worker, whose python3 is Python 3.10): set-up into a virtual environment,
detached runs with pid and exit-code files, the babysitter's recover-and-resume
loop, queued-resource waits, every launch/ command of the READMEs and docs/
under --dry-run, and (slow) setup -> run -> babysit -> evaluate with the real
trainer on both workers. No real gcloud is ever called."""

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from helpers.cpu_flags import xla_flags
from helpers.fake_slice import FakeSlice
from helpers.local_cluster import free_port
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
LAUNCH = os.path.join(REPO, "launch")
LOC = "--zone=us-central2-b"
SCRIPTS = ["create.sh", "setup.sh", "run.sh", "babysit.sh", "delete.sh"]


@pytest.fixture
def fake(tmp_path):
    return FakeSlice(tmp_path / "fake")


def launch(script, *args, env=None, fake=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("APR_")}
    if fake is not None:  # logs copied back land in the fake's folder, not in the checkout
        full_env.update(fake.env, APR_LOG_DIR=str(fake.root / "logs"))
    full_env.update(env or {})
    result = subprocess.run(
        [os.path.join(LAUNCH, script), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return result.returncode, result.stdout.splitlines(), result.stderr.strip()


# --- --help and --dry-run ---------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script, flag):
    code, out, err = launch(script, flag)
    assert code == 0, err
    assert any(f"launch/{script}" in line for line in out), out
    assert any(line.startswith("Environment:") for line in out), out
    assert not any(line.startswith(("set -e", "source ", "#")) for line in out), out


def test_create_prints_exact_commands():
    code, out, _ = launch("create.sh", "--name=apr", LOC, "--accelerator-type=v4-32", "--pricing=spot", "--dry-run")
    assert code == 0
    assert out == [
        "gcloud compute tpus tpu-vm create apr --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --zone=us-central2-b --spot"
    ]
    code, out, _ = launch(
        "create.sh",
        "--queued",
        "--dry-run",
        "--queued-timeout=600",
        env=dict(
            APR_TPU_NAME="apr",
            APR_ZONE="us-east5-a",
            APR_ACCELERATOR_TYPE="v5p-64",
            APR_PRICING="reserved",
            APR_PROJECT="proj",
            APR_RUNTIME_VERSION="v2-alpha-tpuv5",
        ),
    )
    assert code == 0
    assert out == [
        "gcloud compute tpus queued-resources create apr --node-id=apr --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --zone=us-east5-a --project=proj --reserved",
        "# repeated every 60s until it prints ACTIVE (FAILED or SUSPENDED, or 600s, stops with exit 3):",
        "gcloud compute tpus queued-resources describe apr --zone=us-east5-a --project=proj "
        "'--format=value(state.state)'",
    ]


def test_delete_prints_exact_commands():
    assert launch("delete.sh", "--name=apr", LOC, "--dry-run")[1] == [
        "gcloud compute tpus tpu-vm delete apr --zone=us-central2-b --quiet"
    ]
    assert launch("delete.sh", "--name", "apr", LOC, "--queued", "--dry-run")[1] == [
        "gcloud compute tpus queued-resources delete apr --zone=us-central2-b --force --quiet"
    ]


def test_setup_installs_a_venv_on_every_worker_and_mounts_the_bucket(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("")
    code, out, err = launch(
        "setup.sh", "--name=apr", LOC, "--bucket=gs://bkt", f"--config={config}", "--dry-run", env={"TMPDIR": "/tmp"}
    )
    assert code == 0, err
    assert out[0] == (
        f"tar -czf /tmp/apr_jax_src_apr.tar.gz -C {REPO} --exclude=.git --exclude=runs "
        "--exclude=data_cache --exclude=.venv --exclude=.pytest_cache "
        "--exclude=__pycache__ '--exclude=*.egg-info' ."
    )
    assert out[1] == (
        "gcloud compute tpus tpu-vm scp /tmp/apr_jax_src_apr.tar.gz "
        "apr:apr_jax_src.tar.gz --worker=all --zone=us-central2-b"
    )
    assert out[2].startswith(
        "gcloud compute tpus tpu-vm ssh apr --worker=all --zone=us-central2-b "
        "'--command=rm -rf ~/apr_jax && mkdir -p ~/apr_jax && tar -xzf"
    )
    install = shlex.split(out[2])[-1]
    assert "python3 -m pip install --user -q uv" in install
    assert '"$UV" venv -q --python 3.12 ~/apr_jax_venv' in install
    assert '"$UV" pip install -q --python ~/apr_jax_venv/bin/python -e ".[tpu]"' in install
    assert "~/apr_jax_venv/bin/python -c" in install
    assert "python3 -m apr_jax" not in install and "python3 -c" not in install
    assert out[3] == (
        f"gcloud compute tpus tpu-vm scp {config} apr:apr_jax/configs/mine.py --worker=all --zone=us-central2-b"
    )
    assert out[4].startswith("gcloud compute tpus tpu-vm ssh apr --worker=all")
    assert out[4].endswith(
        "mountpoint -q /mnt/gcs/bkt || gcsfuse --implicit-dirs --rename-dir-limit=200000 bkt /mnt/gcs/bkt'"
    )
    assert len(out) == 5
    # Another Python and extra; a config in the bucket is not copied.
    code, out, err = launch(
        "setup.sh",
        "--name=apr",
        LOC,
        "--bucket=bkt",
        "--python=3.11",
        "--extra=",
        "--config=gs://bkt/cfg/mine.py",
        "--dry-run",
    )
    assert code == 0, err
    assert "--python 3.11 ~/apr_jax_venv" in out[2] and '-e "."' in out[2]
    assert len(out) == 4 and not any("apr_jax/configs/" in line for line in out)


RUN = ["--name=apr", LOC, "--workdir=gs://bkt/runs/a", "--config=configs/countdown4_apr_228m.py"]


def remote(line):
    """The --command of a printed gcloud ssh line."""
    return shlex.split(line)[-1].removeprefix("--command=")


def test_run_starts_the_same_detached_command_on_all_workers():
    code, out, err = launch("run.sh", *RUN, "--dry-run", "--config.train.steps=100", "--", "--config.name=two words")
    assert code == 0, err
    assert len(out) == 1
    assert out[0].startswith("gcloud compute tpus tpu-vm ssh apr --worker=all --zone=us-central2-b '--command=")
    start = remote(out[0])
    assert start.startswith('mountpoint -q /mnt/gcs/bkt || { echo "error: /mnt/gcs/bkt is not mounted')
    assert "[ -x ~/apr_jax_venv/bin/python ] ||" in start
    # A stale run is stopped by the pid file, checked to be one of ours; nothing by name.
    assert (
        'if [ -f ~/apr_jax_run/pid ] && ps -o args= -p "$(cat ~/apr_jax_run/pid)" 2>/dev/null '
        "| grep -q apr_jax_run; then"
    ) in start
    assert 'kill -TERM -- "-$pid"' in start and "pkill" not in start and "killall" not in start
    assert (
        "setsid nohup bash -c '" in start
        and "' apr_jax_run env APR_JAX_DISTRIBUTED=auto "
        "APR_JAX_DISTRIBUTED_TIMEOUT=300 PYTHONUNBUFFERED=1 ~/apr_jax_venv/bin/python -m apr_jax.train "
        "--workdir=/mnt/gcs/bkt/runs/a --config=configs/countdown4_apr_228m.py "
        "--config.train.steps=100 '--config.name=two words' >> \"$log\" 2>&1 < /dev/null & "
        "echo $! > ~/apr_jax_run/pid;"
    ) in start
    assert "log=/mnt/gcs/bkt/runs/a/logs/$(hostname).log" in start
    assert "python3" not in start


def test_run_wait_and_follow_print_the_polling_and_log_copy():
    code, out, err = launch("run.sh", *RUN, "--dry-run", "--follow", "--log-dir=here")
    assert code == 0, err
    assert out[1] == "# worker 0's log until its run ends:"
    assert out[2].startswith("gcloud compute tpus tpu-vm ssh apr --worker=0 --zone=us-central2-b '--command=tail -c +")
    assert out[3] == ("# repeated every 60s until every worker's run has ended (exits with the run's exit code):")
    assert "apr_jax_run: $h $s id=$id" in remote(out[4])
    assert out[5:] == ["mkdir -p here", "gcloud storage cp 'gs://bkt/runs/a/logs/*.log' here/"]
    code, wait, _ = launch("run.sh", *RUN, "--dry-run", "--wait", "--log-dir=here")
    assert wait == [out[0]] + out[3:]
    code, attach, _ = launch("run.sh", *RUN, "--dry-run", "--attach", "--log-dir=here")
    assert attach == out[3:]  # starts nothing


def test_run_passes_any_module_its_flags_and_maps_bucket_paths():
    code, out, err = launch(
        "run.sh",
        "--name=apr",
        LOC,
        "--workdir=gs://bkt/runs/a",
        "--module=evaluate",
        "--dry-run",
        "--compile-cache=gs://bkt/xla_cache",
        "--",
        "--split=test",
        "--num",
        "20",
        "--out=gs://bkt/runs/a/eval.jsonl",
        "--checkpoint",
        "gs://bkt/runs/b/checkpoints/4",
    )
    assert code == 0, err
    assert (
        "APR_JAX_COMPILE_CACHE=/mnt/gcs/bkt/xla_cache ~/apr_jax_venv/bin/python -m apr_jax.evaluate "
        "--workdir=/mnt/gcs/bkt/runs/a --split=test --num 20 --out=/mnt/gcs/bkt/runs/a/eval.jsonl "
        "--checkpoint /mnt/gcs/bkt/runs/b/checkpoints/4 >>"
    ) in remote(out[0])
    # A config in the bucket is read there, as gs:// or as its mounted path.
    for config in ("gs://bkt/cfg/c.py", "/mnt/gcs/bkt/cfg/c.py"):
        code, out, err = launch(
            "run.sh", "--name=apr", LOC, "--workdir=gs://bkt/runs/a", f"--config={config}", "--dry-run"
        )
        assert code == 0, err
        assert "-m apr_jax.train --workdir=/mnt/gcs/bkt/runs/a --config=/mnt/gcs/bkt/cfg/c.py >>" in remote(out[0])
    # convert and aot take no --workdir; lists map part by part.
    code, out, err = launch(
        "run.sh",
        "--name=apr",
        LOC,
        "--workdir=gs://bkt/runs/a",
        "--module=convert",
        "--dry-run",
        "--",
        "--hf_dir=gs://bkt/hf",
        "--out=gs://bkt/out",
        "--config.x=a,b",
    )
    assert code == 0, err
    assert "-m apr_jax.convert --hf_dir=/mnt/gcs/bkt/hf --out=/mnt/gcs/bkt/out --config.x=a,b >>" in remote(out[0])
    code, out, err = launch(
        "run.sh",
        "--name=apr",
        LOC,
        "--workdir=gs://bkt/runs/a",
        "--module=evaluate",
        "--dry-run",
        "--",
        "--workdir=gs://bkt/a,gs://bkt/b",
    )
    assert "--workdir=/mnt/gcs/bkt/a,/mnt/gcs/bkt/b >>" in remote(out[0])


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("create.sh", [LOC, "--accelerator-type=v4-32"], "error: missing --name (or set APR_TPU_NAME)"),
        (
            "create.sh",
            ["--name=a", LOC, "--accelerator-type=v4-33"],
            "error: unknown accelerator type 'v4-33'; known: v4-8",
        ),
        (
            "create.sh",
            ["--name=a", LOC, "--accelerator-type=v4-8", "--pricing=cheap"],
            "error: --pricing must be on-demand, spot, preemptible or reserved, got 'cheap'",
        ),
        (
            "create.sh",
            ["--name=a", LOC, "--accelerator-type=v4-8", "--pricing=preemptible", "--queued"],
            "error: --pricing=preemptible is not offered for queued resources",
        ),
        (
            "create.sh",
            ["--name=a", LOC, "--accelerator-type=v4-8", "--queued", "--queued-timeout=1h"],
            "error: --queued-timeout must be whole seconds (0: no limit), got '1h'",
        ),
        ("create.sh", ["--name=a", "--zone"], "error: flag --zone needs a value"),
        ("delete.sh", ["--name=a"], "error: missing --zone (or set APR_ZONE)"),
        ("setup.sh", ["--name=a", LOC], "error: missing --bucket (or set APR_BUCKET)"),
        ("setup.sh", ["--name=a", LOC, "--bucket=b", "--config=nope.py"], "error: --config=nope.py: no such file"),
        (
            "setup.sh",
            ["--name=a", LOC, "--bucket=b", "--python=3.10"],
            "error: --python=3.10: apr_jax runs on Python 3.11 3.12 3.13",
        ),
        ("setup.sh", ["--name=a", LOC, "--bucket=b", "--extra=tpu]"], "error: --extra=tpu]: give extras"),
        (
            "setup.sh",
            ["--name=a", LOC, "--bucket=b", "--config=gs://other/c.py"],
            "error: --config: gs://other/c.py is not in gs://b, the bucket mounted on the workers",
        ),
        ("run.sh", ["--name=a", LOC, "--config=c.py"], "error: missing --workdir (or set APR_WORKDIR)"),
        ("run.sh", ["--name=a", LOC, "--config=c.py", "--workdir=/tmp/w"], "must be a gs:// path"),
        ("run.sh", ["--name=a", LOC, "--workdir=gs://b/w"], "error: missing --config (or set APR_CONFIG)"),
        (
            "run.sh",
            ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--worker=0"],
            "error: --worker=0: a run starts on every worker at once (--worker=all)",
        ),
        (
            "run.sh",
            ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--", "steps=3"],
            "error: arguments after -- must be flags of apr_jax.train like --config.train.steps=100",
        ),
        (
            "run.sh",
            ["--name=a", LOC, "--workdir=gs://b/w", "--module=serve"],
            "error: --module=serve: one of train evaluate compare convert aot",
        ),
        (
            "run.sh",
            ["--name=a", LOC, "--workdir=gs://b/w", "--module=evaluate", "--", "--out=gs://c/x"],
            "error: --out: gs://c/x is not in gs://b, the bucket mounted on the workers",
        ),
        (
            "run.sh",
            ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--compile-cache=gs://c/x"],
            "error: --compile-cache: gs://c/x is not in gs://b",
        ),
        (
            "run.sh",
            ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--follow", "--stop"],
            "error: --follow and --stop exclude each other",
        ),
        (
            "babysit.sh",
            ["--name=a", LOC, "--bucket=b", "--workdir=gs://b/w", "--config=configs/default.py"],
            "error: missing --accelerator-type (or set APR_ACCELERATOR_TYPE)",
        ),
        ("babysit.sh", ["--name=a", LOC, "--acclerator-type=v4-8"], "error: unknown flag --acclerator-type"),
        (
            "babysit.sh",
            [
                "--name=a",
                LOC,
                "--accelerator-type=v4-8",
                "--bucket=b",
                "--workdir=gs://b/w",
                "--config=configs/default.py",
                "--queued",
                "--queued-timeout=-1",
            ],
            "error: --queued-timeout must be whole seconds",
        ),
    ],
)
def test_bad_input_explained_before_any_gcloud_call(fake, script, args, message):
    code, out, err = launch(script, *args, fake=fake)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert fake.calls() == []


# --- on the fake slice --------------------------------------------------------

SLICE = ["--name=apr", LOC]
WORKDIR = "--workdir=gs://bkt/runs/a"


def test_setup_on_a_python310_image_makes_a_venv_on_every_worker(fake):
    code, out, err = launch("setup.sh", *SLICE, "--bucket=bkt", "--config=configs/default.py", fake=fake)
    assert code == 0, err
    assert fake.kinds() == ["tpu-vm scp", "setup", "tpu-vm scp", "mount"]
    # The image's python3 only installed uv; uv made a 3.12 venv on each worker
    # and installed the checkout there with the tpu extra.
    assert fake.lines("python3_calls") == ["-m pip install --user -q uv"] * 2
    for w in range(2):
        home = fake.home(w)
        assert f"{w} {home}/apr_jax_venv 3.12" in fake.lines("venvs")
        assert f"{w} {home}/apr_jax_venv/bin/python .[tpu]" in fake.lines("installs")
        assert (home / "apr_jax" / "pyproject.toml").exists() and (home / "apr_jax/configs/default.py").exists()
        assert (home / ".fake_mounts").read_text().split() == [str(fake.bucket())]
    assert out == [f"apr-w-{w}: Python 3.12.0 - jax (scripted) - 4 devices fake TPU" for w in range(2)]


def set_up(fake):
    code, _, err = launch("setup.sh", *SLICE, "--bucket=bkt", fake=fake)
    assert code == 0, err


def statuses(fake, *args):
    code, out, err = launch("run.sh", *SLICE, WORKDIR, "--config=configs/default.py", "--status", *args, fake=fake)
    assert code == 0, err
    return [line.rsplit(" id=", 1)[0] for line in out]


def test_run_returns_at_once_and_restarts_only_its_own_stale_run(fake):
    set_up(fake)
    run = ["run.sh", *SLICE, WORKDIR, "--config=configs/default.py"]
    env = {"FAKE_RUN_SECONDS": "30"}
    started = time.time()
    code, out, err = launch(*run, fake=fake, env=env)
    assert code == 0, err
    assert time.time() - started < 15  # the runs go on for 30 s
    assert [line.split(" (pid")[0] for line in out] == [f"apr-w-{w}: started apr_jax.train" for w in range(2)]
    assert statuses(fake) == [f"apr_jax_run: apr-w-{w} running" for w in range(2)]
    first = [int((fake.home(w) / "apr_jax_run/pid").read_text()) for w in range(2)]
    # An unrelated process of the same name is never touched: only the pid file counts.
    bystander = subprocess.Popen(["bash", "-c", "sleep 60", "apr_jax_run"])
    try:
        code, out, err = launch(*run, "--", "--config.train.steps=5", fake=fake, env=env)
        assert code == 0, err
        assert [line.split(" (pid")[0] for line in out if "stopping" in line] == [
            f"apr-w-{w}: stopping the run started before" for w in range(2)
        ]
        for w, pid in enumerate(first):  # gone (or a zombie nobody reaped yet)
            ps = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
            assert ps.stdout.strip()[:1] in ("", "Z"), ps.stdout
            assert (fake.home(w) / "apr_jax_run/pid").read_text().strip() != str(pid)
        assert bystander.poll() is None
    finally:
        bystander.kill()
    assert statuses(fake) == [f"apr_jax_run: apr-w-{w} running" for w in range(2)]
    code, _, err = launch("run.sh", *SLICE, WORKDIR, "--config=configs/default.py", "--stop", fake=fake)
    assert code == 0, err
    assert statuses(fake) == [f"apr_jax_run: apr-w-{w} exited 143" for w in range(2)]
    log = (fake.bucket() / "runs/a/logs/apr-w-1.log").read_text()
    assert "apr-w-1: apr_jax.train" in log and log.rstrip().endswith("apr-w-1: exit code 143")
    assert "--config.train.steps=5" in fake.lines("runs")[-1]


def test_run_wait_exits_with_a_failing_workers_code_and_copies_the_logs(fake, tmp_path):
    set_up(fake)
    (fake.root / "run_codes").write_text("0 3\n")
    code, out, err = launch(
        "run.sh", *SLICE, WORKDIR, "--config=configs/default.py", "--wait", f"--log-dir={tmp_path}/logs", fake=fake
    )
    assert code == 3, err
    assert "apr-w-1: the run exited 3; see gs://bkt/runs/a/logs/apr-w-1.log" in err
    assert sorted(os.listdir(tmp_path / "logs")) == ["apr-w-0.log", "apr-w-1.log"]
    assert (fake.root / "workers/w1/apr_jax_run/exit_code").read_text().strip() == "3"


def test_run_follow_shows_worker_0s_log_until_the_run_ends(fake, tmp_path):
    set_up(fake)
    (fake.root / "run_codes").write_text("0\n")
    code, out, err = launch(
        "run.sh",
        *SLICE,
        WORKDIR,
        "--config=configs/default.py",
        "--follow",
        f"--log-dir={tmp_path}/logs",
        fake=fake,
        env={"FAKE_RUN_SECONDS": "2"},
    )
    assert code == 0, err
    shown = out[2:]
    assert shown[0].endswith("apr-w-0: apr_jax.train")
    assert shown[1] == "scripted apr_jax run 1 on apr-w-0: exit 0"
    assert shown[2].endswith("apr-w-0: exit code 0") and len(shown) == 3
    assert "the run ended with exit code 0" in err


def test_run_on_a_slice_that_was_not_set_up_fails_in_one_line_per_worker(fake):
    code, out, err = launch("run.sh", *SLICE, WORKDIR, "--config=configs/default.py", fake=fake)
    assert code == 2
    assert err.splitlines() == [
        f"error: {fake.bucket()} is not mounted on apr-w-{w}; run launch/setup.sh --bucket=bkt" for w in range(2)
    ]


BABYSIT = [
    *SLICE,
    "--accelerator-type=v4-32",
    "--pricing=spot",
    "--bucket=bkt",
    WORKDIR,
    "--config=configs/default.py",
    "--max-failures=2",
]


def test_babysitter_recreates_a_preempted_slice_and_resumes(fake):
    (fake.root / "run_codes").write_text("preempt\n0\n")  # preempted mid-run, then finishes
    code, _, err = launch("babysit.sh", *BABYSIT, "--", "--config.train.steps=7", fake=fake)
    assert code == 0, err
    setup = ["tpu-vm scp", "setup", "tpu-vm scp", "mount"]
    assert fake.kinds(collapse_status=True) == (
        ["tpu-vm describe", "status"]
        + setup  # nothing to attach to: set up
        + [
            "start",
            "status",
            "storage cp",
            "tpu-vm describe",  # preempted: no answer
            "tpu-vm describe",
            "tpu-vm delete",
            "tpu-vm create",
        ]
        + setup
        + ["start", "status", "storage cp", "tpu-vm describe"]
    )
    runs = fake.lines("runs")
    assert len(runs) == 4 and all(
        "--config.train.steps=7" in r and "--workdir=" + str(fake.bucket()) + "/runs/a" in r for r in runs
    )
    assert "preempted; will recreate" in err and "run finished" in err
    assert fake.lines("python3_calls") == ["-m pip install --user -q uv"] * 4  # two set-ups of two workers


def test_babysitter_gives_up_on_a_run_that_fails_on_a_healthy_slice(fake):
    (fake.root / "run_codes").write_text("1 0\n1 1\n1 1\n")
    code, _, err = launch("babysit.sh", *BABYSIT, fake=fake)
    assert code == 1
    assert fake.kinds().count("start") == 2
    assert "giving up: the run fails on a healthy slice" in err
    assert "run failed with exit 1 on a healthy slice (2 of 2)" in err
    assert "tpu-vm delete" not in fake.kinds()


def test_babysitter_deletes_the_slice_when_done(fake):
    (fake.root / "run_codes").write_text("0\n")
    code, _, err = launch("babysit.sh", *BABYSIT, "--delete-when-done", fake=fake)
    assert code == 0, err
    assert fake.kinds()[-2:] == ["tpu-vm describe", "tpu-vm delete"]
    assert fake.state() == "MISSING"
    code, out, err = launch("babysit.sh", *BABYSIT, "--dry-run", env={"APR_DELETE_WHEN_DONE": "1"})
    assert out[-2:] == [
        "# once it has finished (exit 0):",
        "gcloud compute tpus tpu-vm delete apr --zone=us-central2-b --quiet",
    ]


def test_babysitter_waits_for_the_same_run_already_going(fake):
    set_up(fake)
    (fake.root / "run_codes").write_text("0\n")
    code, _, err = launch(
        "run.sh", *SLICE, WORKDIR, "--config=configs/default.py", fake=fake, env={"FAKE_RUN_SECONDS": "3"}
    )
    assert code == 0, err
    calls_before = len(fake.calls())
    code, _, err = launch("babysit.sh", *BABYSIT, fake=fake, env={"APR_POLL_SECONDS": "1"})
    assert code == 0, err
    kinds = fake.kinds()[calls_before:]
    assert kinds[0] == "tpu-vm describe" and set(kinds[1:-2]) == {"status"}
    assert kinds[-2:] == ["storage cp", "tpu-vm describe"]  # no set-up, no second start
    assert "waited for the run already going" in err
    # A different command is not waited for: it is replaced.
    calls_before = len(fake.calls())
    code, _, err = launch("babysit.sh", *BABYSIT, "--", "--config.train.steps=9", fake=fake)
    assert code == 0, err
    assert "start" in fake.kinds()[calls_before:] and "setup" in fake.kinds()[calls_before:]


@pytest.mark.parametrize(
    "states,reason,message",
    [
        (
            "WAITING_FOR_RESOURCES\nFAILED\n",
            "Capacity\nexhausted in zone",
            "error: queued resource apr is FAILED: Capacity exhausted in zone; "
            "delete it with launch/delete.sh --queued",
        ),
        (
            "PROVISIONING\nSUSPENDED\n",
            "",
            "error: queued resource apr is SUSPENDED (its TPUs were deleted, initiated by SERVICE)",
        ),
    ],
)
def test_queued_wait_stops_on_failed_or_suspended(fake, states, reason, message):
    fake.set_state("MISSING")
    (fake.root / "failed_reason").write_text(reason)
    create = ["create.sh", *SLICE, "--accelerator-type=v4-8", "--queued"]
    # create.sh asks right after creating; the fake answers these states first.
    (fake.root / "queued_states").write_text(states)
    code, out, err = launch(*create, fake=fake)
    assert code == 3
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith(message), err
    # The babysitter stops on it too, with the same line.
    fake.set_state("MISSING")
    (fake.root / "queued_states").write_text(states)
    code, _, err = launch("babysit.sh", *BABYSIT, "--queued", fake=fake)
    assert code == 3
    assert message in err and "giving up: the queued resource did not become ACTIVE" in err
    assert "start" not in fake.kinds()


def test_queued_wait_times_out_and_succeeds_when_active(fake):
    fake.set_state("MISSING")
    create = ["create.sh", *SLICE, "--accelerator-type=v4-8", "--queued"]
    (fake.root / "queued_states").write_text("WAITING_FOR_RESOURCES\n" * 1000)
    started = time.time()
    code, _, err = launch(*create, "--queued-timeout=2", fake=fake, env={"APR_POLL_SECONDS": "1"})
    assert code == 3 and time.time() - started < 10
    assert err == (
        "error: queued resource apr is not ACTIVE after 2s (state WAITING_FOR_RESOURCES); "
        "delete it with launch/delete.sh --queued or raise --queued-timeout"
    )
    (fake.root / "queued_states").write_text("ACCEPTED\nPROVISIONING\n")
    code, _, err = launch(*create, fake=fake, env={"APR_QUEUED_TIMEOUT": "60"})
    assert code == 0, err
    assert fake.kinds()[-4:] == ["queued-resources create"] + ["queued-resources describe"] * 3


def test_babysitter_dry_run_prints_one_round():
    code, out, err = launch("babysit.sh", *BABYSIT, "--compile-cache=gs://bkt/xla", "--python=3.13", "--dry-run")
    assert code == 0, err
    assert out[1] == "gcloud compute tpus tpu-vm describe apr --zone=us-central2-b '--format=value(state)'"
    assert out[2] == "gcloud compute tpus tpu-vm delete apr --zone=us-central2-b --quiet"
    assert out[3].startswith("gcloud compute tpus tpu-vm create apr --accelerator-type=v4-32")
    assert sum("--python 3.13 ~/apr_jax_venv" in line for line in out) == 1
    starts = [line for line in out if "setsid nohup" in line]
    assert len(starts) == 1 and "APR_JAX_COMPILE_CACHE=/mnt/gcs/bkt/xla" in starts[0]
    assert "# repeated every 60s until every worker's run has ended (exits with the run's exit code):" in out


# --- the documentation's commands --------------------------------------------


def documented_commands(path):
    """(exports, command) for each command line of the file's ```bash blocks,
    continuation lines joined, comments dropped; exports accumulate in order."""
    text = open(path).read()
    exports, commands = [], []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line:
                continue
            if line.startswith("export "):
                exports.append(line)
            else:
                commands.append((list(exports), line))
    return commands


NOT_RUN = ("pip install ", "tensorboard ", "gcloud storage cp ")  # outside this project


# The fewest launch/ commands each page holds (a page whose blocks lose them fails).
LAUNCHED = {"launch/README.md": 8, "README.md": 1, "docs/accelerators.md": 1, "docs/compare.md": 1}


@pytest.mark.parametrize("readme", sorted(LAUNCHED))
def test_every_documented_command_runs_as_written(fake, tmp_path, readme):
    """launch/*.sh commands run under --dry-run (no gcloud call); python -m
    apr_jax.* commands parse their flags: train prints its config, aot stops
    at an unknown --topology before compiling, others get past flag parsing."""
    commands = documented_commands(os.path.join(REPO, readme))
    launched = 0
    for exports, command in commands:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APR_")}
        env.update(GCLOUD=fake.env["GCLOUD"], FAKE_DIR=str(fake.root), APR_TPU_NAME="apr-doc", APR_ZONE="us-central2-b")
        prefix = "; ".join(exports + [""])
        if command.startswith("launch/"):
            launched += 1
            dry = command.replace(" -- ", " --dry-run -- ", 1) if " -- " in command else command + " --dry-run"
            result = subprocess.run(
                ["bash", "-c", prefix + dry], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            assert result.stdout.strip(), command
        elif command.startswith("python -m apr_jax.") and readme == "launch/README.md":
            module = command.split()[2]
            extra = {"apr_jax.train": " --print_config", "apr_jax.aot": " --topology=nope"}.get(module, "")
            run_env = dict(env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
            result = subprocess.run(
                ["bash", "-c", f"{prefix}{command.replace('python ', sys.executable + ' ', 1)}{extra}"],
                cwd=REPO if module != "apr_jax.evaluate" else tmp_path,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if module == "apr_jax.train":
                assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
                assert json.loads(result.stdout)["name"]
            elif module == "apr_jax.aot":
                assert "unknown TPU accelerator type 'nope'" in result.stderr, result.stderr[-2000:]
            else:
                assert "unknown flag" not in result.stderr and "needs a value" not in result.stderr, result.stderr[
                    -2000:
                ]
        elif readme == "launch/README.md":
            assert command.startswith(NOT_RUN), f"a documented command no test runs: {command}"
    assert launched >= LAUNCHED[readme]
    assert fake.calls() == []


# --- end to end: setup -> run -> babysit -> evaluate ------------------------

TINY = [
    "--config.task.num_train=160",
    "--config.task.num_validation=16",
    "--config.task.num_test=16",
    "--config.model.num_layers=2",
    "--config.model.d_model=32",
    "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1",
    "--config.model.d_ff=64",
    "--config.model.max_len=128",
    "--config.data.seq_len=128",
    "--config.data.num_workers=1",
    "--config.train.batch_size=8",
    "--config.train.steps=4",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.train.eval_batches=1",
    "--config.train.checkpoint_every=2",
    "--config.eval.num_problems=0",
    "--config.eval.row_buckets=2",
    "--config.eval.kv_buckets=1",
]


@pytest.mark.slow
def test_setup_run_babysit_evaluate_on_a_two_worker_slice(tmp_path):
    """From a Python 3.10 image to a checkpoint, metrics and an evaluation in
    the bucket's workdir: each fake worker gets a real venv of this
    interpreter; the trainer runs on both workers at once, joined as a
    two-process JAX cluster (the fake gives each worker the coordinator
    address, process count and id that JAX reads from a real slice)."""
    fake = FakeSlice(tmp_path / "fake", uv_mode="real")
    env = {
        "FAKE_JAX_PORT": str(free_port()),
        "APR_POLL_SECONDS": "1",
        "WORKER_JAX_PLATFORMS": "cpu",
        "WORKER_XLA_FLAGS": xla_flags(1),
        "WORKER_JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "APR_JAX_DISTRIBUTED_TIMEOUT": "60",
    }
    bucket = fake.bucket()
    workdir = bucket / "runs/tiny"
    started = time.time()

    code, out, err = launch("setup.sh", *SLICE, "--bucket=bkt", fake=fake, env=env, timeout=120)
    assert code == 0, err
    assert fake.lines("python3_calls") == ["-m pip install --user -q uv"] * 2
    version = ".".join(map(str, sys.version_info[:2]))
    for w in range(2):
        assert re.fullmatch(rf"apr-w-{w}: Python {version}\.\d+ - jax \S+ - 1 devices cpu", out[w]), out

    train = [
        *SLICE,
        "--workdir=gs://bkt/runs/tiny",
        "--config=configs/default.py",
        "--compile-cache=gs://bkt/xla_cache",
        *TINY,
    ]
    code, out, err = launch("run.sh", *train, fake=fake, env=env)
    assert code == 0, err
    # The run goes on after run.sh returned.
    assert statuses(fake, "--workdir=gs://bkt/runs/tiny") == [f"apr_jax_run: apr-w-{w} running" for w in range(2)]

    code, _, err = launch(
        "babysit.sh",
        *train,
        "--accelerator-type=v4-16",
        "--bucket=bkt",
        f"--log-dir={tmp_path}/logs",
        fake=fake,
        env=env,
        timeout=240,
    )
    assert code == 0, err
    assert "waited for the run already going" in err and "run finished (exit 0, slice READY)" in err
    assert fake.kinds().count("start") == 1  # babysit attached; it did not restart the run
    log0 = (tmp_path / "logs/apr-w-0.log").read_text()
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}; 2 cpu devices" in log0, log0[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) and "4" in os.listdir(workdir / "checkpoints")
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert os.listdir(workdir / "tensorboard") and os.listdir(bucket / "xla_cache")

    code, out, err = launch(
        "run.sh",
        *SLICE,
        "--workdir=gs://bkt/runs/tiny",
        "--module=evaluate",
        "--follow",
        f"--log-dir={tmp_path}/logs",
        "--",
        "--split=test",
        "--num=4",
        "--out=gs://bkt/runs/tiny/eval_test.jsonl",
        fake=fake,
        env=env,
        timeout=180,
    )
    assert code == 0, err
    assert any(line.startswith("tiny@4 default") for line in out), out
    rows = [json.loads(line) for line in open(workdir / "eval_test.jsonl")]
    assert len(rows) == 4 and all("tree" in row for row in rows)
    for w in range(2):
        assert "tiny@4 default" in (workdir / f"logs/apr-w-{w}.log").read_text()
    # Nothing of the project ran on the image's Python 3.10.
    assert fake.lines("python3_calls") == ["-m pip install --user -q uv"] * 2
    print(f"end to end: {time.time() - started:.0f}s")
