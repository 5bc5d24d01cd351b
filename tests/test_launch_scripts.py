"""launch/*.sh: the exact gcloud commands under --dry-run, one-line errors
before any gcloud call, and the babysitter's recover-and-resume loop against a
fake gcloud (no real gcloud is ever called)."""

import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
LOC = "--zone=us-central2-b"

# A stand-in for gcloud: logs every call; `describe` prints the slice state
# kept in $FAKE_DIR/state; create/delete change it; the training ssh command
# exits with the next code in $FAKE_DIR/run_codes and may preempt the slice.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/calls"
case "$*" in
  *" describe "*) [[ "$(cat "$FAKE_DIR/state")" == MISSING ]] && exit 1; cat "$FAKE_DIR/state" ;;
  *" create "*) echo READY > "$FAKE_DIR/state" ;;
  *" delete "*) echo MISSING > "$FAKE_DIR/state" ;;
  *apr_jax.train*)
    code="$(head -n1 "$FAKE_DIR/run_codes")"; sed -i 1d "$FAKE_DIR/run_codes"
    [[ "$code" == 255 ]] && echo PREEMPTED > "$FAKE_DIR/state"
    exit "$code" ;;
esac
exit 0
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    path = tmp_path / "gcloud"
    path.write_text(FAKE_GCLOUD)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "state").write_text("READY\n")
    (tmp_path / "run_codes").write_text("")
    return tmp_path


def launch(script, *args, env=None, fake=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("APR_")}
    full_env.update(env or {})
    if fake is not None:
        full_env.update(GCLOUD=str(fake / "gcloud"), FAKE_DIR=str(fake), APR_POLL_SECONDS="0")
    result = subprocess.run([os.path.join(LAUNCH, script), *args], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout.splitlines(), result.stderr.strip()


def calls(fake):
    path = fake / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_create_prints_exact_commands():
    code, out, _ = launch("create.sh", "--name=apr", LOC, "--accelerator-type=v4-32",
                          "--pricing=spot", "--dry-run")
    assert code == 0
    assert out == ["gcloud compute tpus tpu-vm create apr --accelerator-type=v4-32 "
                   "--version=tpu-ubuntu2204-base --zone=us-central2-b --spot"]
    code, out, _ = launch("create.sh", "--queued", "--dry-run", env=dict(
        APR_TPU_NAME="apr", APR_ZONE="us-east5-a", APR_ACCELERATOR_TYPE="v5p-64",
        APR_PRICING="reserved", APR_PROJECT="proj", APR_RUNTIME_VERSION="v2-alpha-tpuv5"))
    assert code == 0
    assert out == [
        "gcloud compute tpus queued-resources create apr --node-id=apr --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --zone=us-east5-a --project=proj --reserved",
        "# repeated every 60s until it prints ACTIVE:",
        "gcloud compute tpus queued-resources describe apr --zone=us-east5-a --project=proj "
        "'--format=value(state.state)'"]


def test_delete_prints_exact_commands():
    assert launch("delete.sh", "--name=apr", LOC, "--dry-run")[1] == [
        "gcloud compute tpus tpu-vm delete apr --zone=us-central2-b --quiet"]
    assert launch("delete.sh", "--name", "apr", LOC, "--queued", "--dry-run")[1] == [
        "gcloud compute tpus queued-resources delete apr --zone=us-central2-b --force --quiet"]


def test_setup_installs_on_every_worker_and_mounts_the_bucket(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("")
    code, out, err = launch("setup.sh", "--name=apr", LOC, "--bucket=gs://bkt",
                            f"--config={config}", "--dry-run", env={"TMPDIR": "/tmp"})
    assert code == 0, err
    assert out[0] == (f"tar -czf /tmp/apr_jax_src_apr.tar.gz -C {REPO} --exclude=.git --exclude=runs "
                      "--exclude=data_cache --exclude=.venv --exclude=.pytest_cache "
                      "--exclude=__pycache__ '--exclude=*.egg-info' .")
    assert out[1] == ("gcloud compute tpus tpu-vm scp /tmp/apr_jax_src_apr.tar.gz "
                      "apr:/tmp/apr_jax_src.tar.gz --worker=all --zone=us-central2-b")
    assert out[2].startswith("gcloud compute tpus tpu-vm ssh apr --worker=all --zone=us-central2-b "
                             "'--command=rm -rf ~/apr_jax && mkdir -p ~/apr_jax && tar -xzf")
    assert 'python3 -m pip install -q -e ".[tpu]"' in out[2]
    assert out[3] == (f"gcloud compute tpus tpu-vm scp {config} apr:apr_jax/configs/mine.py "
                      "--worker=all --zone=us-central2-b")
    assert out[4].startswith("gcloud compute tpus tpu-vm ssh apr --worker=all")
    assert out[4].endswith("mountpoint -q /mnt/gcs/bkt || gcsfuse --implicit-dirs "
                           "--rename-dir-limit=200000 bkt /mnt/gcs/bkt'")
    assert len(out) == 5


def test_run_starts_the_same_command_on_all_workers():
    code, out, err = launch("run.sh", "--name=apr", LOC, "--workdir=gs://bkt/runs/a",
                            "--config=configs/countdown4_apr_228m.py", "--dry-run", "--",
                            "--config.train.steps=100", "--config.name=two words")
    assert code == 0, err
    assert out == [
        "gcloud compute tpus tpu-vm ssh apr --worker=all --zone=us-central2-b '--command="
        "mountpoint -q /mnt/gcs/bkt || { echo \"error: /mnt/gcs/bkt is not mounted; run "
        "launch/setup.sh --bucket=...\" >&2; exit 2; }; cd ~/apr_jax && mkdir -p ~/apr_jax_logs "
        "/mnt/gcs/bkt/runs/a/logs && APR_JAX_DISTRIBUTED=auto APR_JAX_DISTRIBUTED_TIMEOUT=300 "
        "python3 -m apr_jax.train --workdir=/mnt/gcs/bkt/runs/a "
        "--config=configs/countdown4_apr_228m.py --config.train.steps=100 "
        "'\\''--config.name=two words'\\'' 2>&1 | tee ~/apr_jax_logs/train.log; "
        "rc=${PIPESTATUS[0]}; cp ~/apr_jax_logs/train.log /mnt/gcs/bkt/runs/a/logs/$(hostname).log; "
        "exit $rc'",
        "mkdir -p logs/apr",
        "gcloud storage cp 'gs://bkt/runs/a/logs/*.log' logs/apr/"]


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", [LOC, "--accelerator-type=v4-32"], "error: missing --name (or set APR_TPU_NAME)"),
    ("create.sh", ["--name=a", LOC, "--accelerator-type=v4-33"],
     "error: unknown accelerator type 'v4-33'; known: v4-8"),
    ("create.sh", ["--name=a", LOC, "--accelerator-type=v4-8", "--pricing=cheap"],
     "error: --pricing must be on-demand, spot, preemptible or reserved, got 'cheap'"),
    ("create.sh", ["--name=a", LOC, "--accelerator-type=v4-8", "--pricing=preemptible", "--queued"],
     "error: --pricing=preemptible is not offered for queued resources"),
    ("create.sh", ["--name=a", "--zone"], "error: flag --zone needs a value"),
    ("delete.sh", ["--name=a"], "error: missing --zone (or set APR_ZONE)"),
    ("setup.sh", ["--name=a", LOC], "error: missing --bucket (or set APR_BUCKET)"),
    ("setup.sh", ["--name=a", LOC, "--bucket=b", "--config=nope.py"], "error: --config=nope.py: no such file"),
    ("run.sh", ["--name=a", LOC, "--config=c.py"], "error: missing --workdir (or set APR_WORKDIR)"),
    ("run.sh", ["--name=a", LOC, "--config=c.py", "--workdir=/tmp/w"], "must be a gs:// path"),
    ("run.sh", ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--worker=0"],
     "error: --worker=0: training runs on every worker at once (--worker=all)"),
    ("run.sh", ["--name=a", LOC, "--config=c.py", "--workdir=gs://b/w", "--", "steps=3"],
     "arguments after -- must be config overrides"),
    ("babysit.sh", ["--name=a", LOC, "--bucket=b", "--workdir=gs://b/w", "--config=configs/default.py"],
     "error: missing --accelerator-type (or set APR_ACCELERATOR_TYPE)"),
    ("babysit.sh", ["--name=a", LOC, "--acclerator-type=v4-8"], "error: unknown flag --acclerator-type"),
])
def test_bad_input_explained_before_any_gcloud_call(fake_gcloud, script, args, message):
    code, out, err = launch(script, *args, fake=fake_gcloud)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert calls(fake_gcloud) == []


BABYSIT = ["--name=apr", LOC, "--accelerator-type=v4-32", "--pricing=spot", "--bucket=bkt",
           "--workdir=gs://bkt/runs/a", "--config=configs/default.py", "--max-failures=2"]


def test_babysitter_recreates_a_preempted_slice_and_resumes(fake_gcloud):
    (fake_gcloud / "run_codes").write_text("255\n0\n")  # preempted mid-run, then finishes
    code, _, err = launch("babysit.sh", *BABYSIT, "--", "--config.train.steps=7", fake=fake_gcloud)
    assert code == 0, err
    kinds = []
    for call in calls(fake_gcloud):
        words = call.split()
        kind = " ".join(words[2:4]) if words[:2] == ["compute", "tpus"] else " ".join(words[:2])
        if "apr_jax.train" in call:
            kind = "tpu-vm train"
            assert "--config.train.steps=7" in call and "--workdir=/mnt/gcs/bkt/runs/a" in call
        kinds.append(kind)
    setup = ["tpu-vm scp", "tpu-vm ssh", "tpu-vm scp", "tpu-vm ssh"]
    assert kinds == (["tpu-vm describe"] + setup + ["tpu-vm train", "storage cp", "tpu-vm describe",
                     "tpu-vm describe", "tpu-vm delete", "tpu-vm create"] + setup
                     + ["tpu-vm train", "storage cp", "tpu-vm describe"])
    assert "preempted; will recreate" in err and "run finished" in err


def test_babysitter_gives_up_on_a_run_that_fails_on_a_healthy_slice(fake_gcloud):
    (fake_gcloud / "run_codes").write_text("1\n1\n1\n")
    code, _, err = launch("babysit.sh", *BABYSIT, fake=fake_gcloud)
    assert code == 1
    assert sum("apr_jax.train" in c for c in calls(fake_gcloud)) == 2
    assert "giving up: the run fails on a healthy slice" in err
    assert not any(" delete " in f" {c} " for c in calls(fake_gcloud))


def test_babysitter_dry_run_prints_one_round():
    code, out, err = launch("babysit.sh", *BABYSIT, "--dry-run")
    assert code == 0, err
    assert out[1] == "gcloud compute tpus tpu-vm describe apr --zone=us-central2-b '--format=value(state)'"
    assert out[2] == "gcloud compute tpus tpu-vm delete apr --zone=us-central2-b --quiet"
    assert out[3].startswith("gcloud compute tpus tpu-vm create apr --accelerator-type=v4-32")
    assert sum("apr_jax.train" in line for line in out) == 1
