#!/usr/bin/env bash
# launch/slurm.sbatch under a real SLURM on this machine: slurm-wlm from the OS packages, one node
# (this host), the job's 2 CPU ranks under one torchrun. The job is requeued once it has a checkpoint
# (what preemption does); the requeued job must resume from that checkpoint and finish.
#
#   sudo apt-get install slurm-wlm munge     # once
#   tools/slurm_check.sh [OUT=docs/slurm_check.txt]
#
# Needs root (slurmd), runs slurmctld and slurmd with state in a scratch directory and a config of
# their own (no cgroups, no accounting) in /etc/slurm (the one there is restored), and stops them at
# the end. Not part of the test suite: minutes, and a
# scheduler. Prints each step; this run's whole log replaces $OUT at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-docs/slurm_check.txt}
SCRATCH=$(mktemp -d /tmp/dimerec-slurm.XXXXXX)
export PATH="$REPO/.venv/bin:$PATH"  # the caller's environment: the checkout's, here
# SLURM's commands read /etc/slurm/slurm.conf, on a requeued job's node too (its environment is not
# the submitter's): the check's config goes there, and whatever was there is put back at the end.
export SLURM_CONF=/etc/slurm/slurm.conf
mkdir -p /etc/slurm
[ -e "$SLURM_CONF" ] && cp -p "$SLURM_CONF" "$SCRATCH/slurm.conf.saved"
# One run, one file: a second check waits for none and stops at once (the lock), and this run's log is
# written to a file of its own, put at $OUT whole when the run ends (passed or failed), never appended
# to or interleaved with another run's.
exec 9>/tmp/dimerec-slurm-check.lock
flock -n 9 || { echo "slurm_check.sh: another check is running (/tmp/dimerec-slurm-check.lock)" >&2; exit 2; }
LOG=$SCRATCH/slurm_check.txt
exec > >(tee "$LOG") 2>&1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
fail() { stamp "FAILED: $*"; exit 1; }

for command in slurmctld slurmd sbatch scontrol munged; do
  command -v "$command" >/dev/null || fail "$command not found: apt-get install slurm-wlm munge"
done
HOST=$(hostname -s)
mkdir -p "$SCRATCH"/{ctld,d,shared}
cat > "$SLURM_CONF" <<CONF
ClusterName=dimerec-check
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$SCRATCH/ctld
SlurmdSpoolDir=$SCRATCH/d
SlurmctldPidFile=$SCRATCH/ctld.pid
SlurmdPidFile=$SCRATCH/d.pid
SlurmctldLogFile=$SCRATCH/ctld.log
SlurmdLogFile=$SCRATCH/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobRequeue=1
ReturnToService=2
KillWait=60
MpiDefault=none
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

cleanup() {
  scancel --quiet "${JOB:-0}" 2>/dev/null || true
  [ -f "$SCRATCH/d.pid" ] && kill "$(cat "$SCRATCH/d.pid")" 2>/dev/null || true
  [ -f "$SCRATCH/ctld.pid" ] && kill "$(cat "$SCRATCH/ctld.pid")" 2>/dev/null || true
  if [ -e "$SCRATCH/slurm.conf.saved" ]; then cp -p "$SCRATCH/slurm.conf.saved" "$SLURM_CONF"; else rm -f "$SLURM_CONF"; fi
  sleep 0.2  # tee's last lines
  cp "$LOG" "$OUT.partial" && mv "$OUT.partial" "$OUT"
}
trap cleanup EXIT
stamp "slurm $(sbatch --version | awk '{print $2}'), $(dimerec-env --no-lookup | grep -E '^(torch|torchrec) ' | tr -s ' ' | paste -sd, -)"
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  munged --force --num-threads=2 2>/dev/null || munged --force
fi
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || fail "the node did not come up: $(tail -5 "$SCRATCH"/d.log)"
stamp "SLURM up: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"

RUN_DIR=$SCRATCH/shared/run
# The restart tests' tiny job, long enough (~300 steps on 2 CPU ranks) to be requeued in the middle.
JOB=$(RUN_DIR=$RUN_DIR NPROC_PER_NODE=2 OMP_NUM_THREADS=1 sbatch --parsable --nodes=1 --cpus-per-task="$(nproc)" --chdir="$SCRATCH/shared" \
  --output="$SCRATCH/shared/job-%j.out" launch/slurm.sbatch \
  data.synth_users=1500 data.synth_items=500 data.synth_events=60000 train.epochs=8 train.checkpoint_every=20 \
  train.eval_every_epochs=0 model.embedding_dim=16 model.max_history=20 model.num_interests=2 model.dam_hidden=32 \
  model.diffusion_steps=10 train.batch_size=64 train.negatives=128 train.log_every=10 eval.batch_size=64)
stamp "submitted job $JOB"
for _ in $(seq 300); do ls -d "$RUN_DIR"/checkpoints/step-* >/dev/null 2>&1 && break; sleep 1; done
ls -d "$RUN_DIR"/checkpoints/step-* >/dev/null 2>&1 || fail "no checkpoint after 300 s: $(tail -20 "$SCRATCH"/shared/job-"$JOB".out)"
sleep 5
stamp "requeueing job $JOB, as preemption would (checkpoints so far: $(ls "$RUN_DIR"/checkpoints | tr '\n' ' '))"
scontrol requeue "$JOB"
state() { scontrol show job "$JOB" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
for _ in $(seq 900); do [ "$(state)" = COMPLETED ] && break; case "$(state)" in FAILED|CANCELLED|TIMEOUT) break;; esac; sleep 1; done
stamp "job $JOB: $(state), restarts $(scontrol show job "$JOB" | grep -o 'Restarts=[0-9]*')"
echo "----- the job's output"
cat "$SCRATCH/shared/job-$JOB.out"
echo "-----"
[ "$(state)" = COMPLETED ] || fail "the job did not complete"
grep -q "(restart 0)" "$SCRATCH/shared/job-$JOB.out" && grep -q "(restart 1)" "$SCRATCH/shared/job-$JOB.out" \
  || fail "the job did not run twice"
grep -q "stopped by a signal at step" "$SCRATCH/shared/job-$JOB.out" || fail "the first run did not save on SIGTERM"
grep -q "resumed from" "$SCRATCH/shared/job-$JOB.out" || fail "the requeued run did not resume from a checkpoint"
[ -f "$RUN_DIR/final.json" ] || fail "no final.json"
python3 - "$RUN_DIR" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if "loss/total" in l]
final = json.loads((run / "final.json").read_text())
print(f"logged steps {steps[0]}..{steps[-1]} ({len(steps)} lines, {len(steps) - len(set(steps))} logged twice: the steps after the last checkpoint, run again); test HR@10 {final['test']['hr@10']:.4f}")
PY
stamp "PASSED: submitted, requeued mid-run, resumed from its checkpoint, finished"
