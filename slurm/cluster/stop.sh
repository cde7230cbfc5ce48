#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by start.sh.
#
#   slurm/cluster/stop.sh           # stop the daemons, keep the state folder
#   slurm/cluster/stop.sh --purge   # also cancel all jobs and delete the folder
#
# Daemons are found by the pid files in ${VDD_SLURM_HOME:-/tmp/vdd-slurm}/run.
# Without --purge, jobs still running keep running (their slurmstepd outlives
# slurmd) and the next start.sh picks up jobs, job ids and accounting again.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/cluster/common.sh
. "$HERE/common.sh"

purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    -h | --help)
        sed -n '2,10p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (use --purge or nothing)" ;;
esac

if [[ ! -d $STATE ]]; then
    log "nothing to stop: $STATE does not exist"
    exit 0
fi

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 30 s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 pid i
    if ! pid=$(pid_of "$name" "$pidfile"); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        is_running "$name" "$pidfile" || break
        sleep 0.2
    done
    if is_running "$name" "$pidfile"; then
        log "$name ($pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# With --purge no job may outlive the cluster: cancel them while the
# controller still answers, and wait until they are gone.
if ((purge)) && is_running slurmctld "$RUN/slurmctld.pid"; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if ((${#jobs[@]})); then
        log "cancelling ${#jobs[@]} job(s)"
        timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
        for ((i = 0; i < 75; i++)); do
            [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
fi

# Reverse start order: slurmctld flushes to slurmdbd, which needs mariadbd,
# and all of them need munged.
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}
    stop_daemon "${d%%:*}" "${d#*:}"
done

if ((purge)); then
    if [[ ! -e $MARKER ]]; then
        die "not deleting $STATE: it was not made by start.sh"
    fi
    rm -rf -- "$STATE"
    log "deleted $STATE"
fi
log "stopped"
