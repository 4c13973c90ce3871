#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, for tests/cluster/test_slurm.py.
#
#   tests/cluster/slurm_up.sh [STATE_DIR]      (as root; default STATE_DIR /tmp/gaugeflow-slurm)
#   tests/cluster/slurm_down.sh [STATE_DIR]    stops everything this script started
#
# What it does, and why (the pitfalls of a hand-made SLURM, solved here rather than in the
# executor plugin):
# - munged runs with its own key, socket, pid and log under STATE_DIR/munge (the system's
#   munge, if any, is left alone); slurm.conf points at that socket (AuthInfo=socket=...).
# - slurm.conf and gres.conf are written to /etc/slurm: jobs call `srun` with SLURM_* variables
#   stripped, so SLURM_CONF cannot point elsewhere. Files there that we did not write are
#   moved aside to *.gaugeflow-backup and put back by slurm_down.sh.
# - No slurmdbd: `sacct` does not work, so the Snakemake plugin must poll with `squeue`, which
#   only sees finished jobs for MinJobAge seconds; MinJobAge is set to 10 minutes.
# - The node is described with what `slurmd -C` reports (RealMemory 10% lower, so that
#   slurmd never finds less memory than configured and drains the node) and one fake `gpu`
#   GRES (File=/dev/null: slurmd ignores a gpu GRES without a device file) so that jobs
#   asking for `--gpus=1` are accepted and scheduled: the cluster test checks that GPU rules
#   really request one. No GPU is used.
# - No systemd, no cgroups: proctrack/linuxproc, task/none; daemons run as root.
# Idempotent only in the sense that it refuses to start over a running SLURM daemon.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

STATE_DIR=${1:-${GAUGEFLOW_SLURM_DIR:-/tmp/gaugeflow-slurm}}
HERE=$(cd "$(dirname "$0")" && pwd)
CONF_DIR=/etc/slurm
MARKER="# written by gaugeflow tests/cluster/slurm_up.sh"

die() { echo "slurm_up: $*" >&2; exit 1; }
log() { echo "slurm_up: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it writes /etc/slurm and starts daemons)"
for b in munged slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
  command -v "$b" >/dev/null 2>&1 || die "'$b' not found: apt-get install -y slurm-wlm munge"
done
for d in slurmctld slurmd; do
  if pgrep -x "$d" >/dev/null 2>&1; then
    die "a $d is already running (pid $(pgrep -x "$d" | tr '\n' ' ')); not starting a second cluster"
  fi
done

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
# On any failure below, stop whatever was started so far.
trap 'rc=$?; if [ $rc != 0 ]; then echo "slurm_up: failed; stopping what was started" >&2; bash "$HERE/slurm_down.sh" "$STATE_DIR" >&2 || true; fi' EXIT

# ---------------------------------------------------------------- munge
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
mkdir -p "$MUNGE_DIR"
chmod 0755 "$MUNGE_DIR"   # clients need x on the socket dir; the key stays 0600
if [ ! -s "$MUNGE_DIR/munge.key" ]; then
  dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
fi
chmod 0600 "$MUNGE_DIR/munge.key"
munge_args=(--socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key"
  --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log"
  --seed-file="$MUNGE_DIR/munged.seed")
if id munge >/dev/null 2>&1; then
  chown -R munge: "$MUNGE_DIR"
  # munged checks that the directories above its socket are not writable by others
  # (sticky /tmp is fine), so run it as its own user like the packaged service does.
  runuser -u munge -- munged "${munge_args[@]}"
else
  munged --force "${munge_args[@]}"
fi
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
munge --socket="$MUNGE_SOCKET" -n </dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null \
  || die "munged does not answer on $MUNGE_SOCKET (see $MUNGE_DIR/munged.log)"
log "munged up (socket $MUNGE_SOCKET)"

# ---------------------------------------------------------------- slurm.conf
HOST=$(hostname -s)
ADDR=$(getent hosts "$HOST" | awk '{print $1; exit}')
[ -n "$ADDR" ] || ADDR=127.0.0.1
# `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
NODE_LINE=$(slurmd -C | head -1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
[ -n "$MEM" ] || die "cannot parse 'slurmd -C': $NODE_LINE"
NODE_MEM=$((MEM * 9 / 10))
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$NODE_MEM/; s/^NodeName=[^ ]*/NodeName=$HOST/" <<<"$NODE_LINE")

mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool" "$STATE_DIR/log"
mkdir -p "$CONF_DIR"
for f in slurm.conf gres.conf; do
  if [ -e "$CONF_DIR/$f" ] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
    log "moving existing $CONF_DIR/$f aside to $CONF_DIR/$f.gaugeflow-backup"
    mv "$CONF_DIR/$f" "$CONF_DIR/$f.gaugeflow-backup"
  fi
done

cat >"$CONF_DIR/slurm.conf.tmp" <<EOF
$MARKER
# state: $STATE_DIR -- removed or replaced by tests/cluster/slurm_down.sh
ClusterName=gaugeflow
SlurmctldHost=$HOST($ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
ReturnToService=2
# squeue (the status command without slurmdbd) must still see finished jobs when polled
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
$NODE_LINE Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
mv "$CONF_DIR/slurm.conf.tmp" "$CONF_DIR/slurm.conf"
cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
# one fake GPU (/dev/null as its device): lets '--gpus=1' jobs be scheduled on a CPU box
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
EOF
log "wrote $CONF_DIR/slurm.conf: $NODE_LINE Gres=gpu:1"

# ---------------------------------------------------------------- daemons
slurmctld -c -f "$CONF_DIR/slurm.conf"
ok=
for _ in $(seq 100); do
  if scontrol ping 2>/dev/null | grep -q UP; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || die "slurmctld did not come up (see $STATE_DIR/log/slurmctld.log)"
log "slurmctld up (pid $(cat "$STATE_DIR/slurmctld.pid"))"

slurmd -f "$CONF_DIR/slurm.conf"
ok=
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
  case $state in
    idle*|mixed*|allocated*) ok=1; break ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
[ -n "$ok" ] || die "node $HOST not idle (state '${state:-?}'; see $STATE_DIR/log/slurmd.log)"
log "slurmd up (pid $(cat "$STATE_DIR/slurmd.pid")); node $HOST is $state"
sinfo -N -o '%N %P %T %c %m %G'
trap - EXIT
