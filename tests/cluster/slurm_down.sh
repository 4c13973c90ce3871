#!/usr/bin/env bash
# Stop the single-node SLURM started by tests/cluster/slurm_up.sh: cancel its jobs, stop
# slurmd, slurmctld and munged (by the pids in their pid files, nothing else), and put back
# any /etc/slurm files that slurm_up.sh moved aside. Safe to call twice or after a partial
# start. Logs stay in STATE_DIR.
#
#   tests/cluster/slurm_down.sh [STATE_DIR]   (default /tmp/gaugeflow-slurm)
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

STATE_DIR=${1:-${GAUGEFLOW_SLURM_DIR:-/tmp/gaugeflow-slurm}}
CONF_DIR=/etc/slurm
MARKER="# written by gaugeflow tests/cluster/slurm_up.sh"
log() { echo "slurm_down: $*"; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop_pid NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if ! alive "$pid"; then rm -f "$pidfile"; return 0; fi
  # only signal it if it really is that daemon (pid files can go stale)
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    log "pid $pid in $pidfile is not $name; leaving it alone"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 75); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
  log "stopped $name (pid $pid)"
}

ours=
[ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARKER" "$CONF_DIR/slurm.conf" && ours=1

# Jobs first: slurmstepd processes outlive slurmd, so cancel while the daemons still run.
if [ -n "$ours" ] && [ -s "$STATE_DIR/slurmctld.pid" ] && alive "$(cat "$STATE_DIR/slurmctld.pid")"; then
  if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    log "cancelling jobs: $(squeue -h -o '%i(%T)' 2>/dev/null | tr '\n' ' ')"
    scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null
    for _ in $(seq 100); do
      [ -z "$(squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  # any job process still there belongs to this node's jobs (listed by slurmd)
  left=$(scontrol listpids 2>/dev/null | awk 'NR>1 && $1 ~ /^[0-9]+$/ {print $1}')
  [ -n "$left" ] && { log "killing leftover job processes: $left"; kill -KILL $left 2>/dev/null; }
fi

stop_pid slurmd "$STATE_DIR/slurmd.pid"
stop_pid slurmctld "$STATE_DIR/slurmctld.pid"
stop_pid munged "$STATE_DIR/munge/munged.pid"

for f in slurm.conf gres.conf; do
  if [ -f "$CONF_DIR/$f" ] && grep -qF "$MARKER" "$CONF_DIR/$f"; then
    rm -f "$CONF_DIR/$f"
  fi
  if [ -e "$CONF_DIR/$f.gaugeflow-backup" ] && [ ! -e "$CONF_DIR/$f" ]; then
    mv "$CONF_DIR/$f.gaugeflow-backup" "$CONF_DIR/$f"
    log "restored $CONF_DIR/$f"
  fi
done
exit 0
