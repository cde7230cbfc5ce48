# Shared settings and helpers for start.sh and stop.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts

# Everything (config, keys, spool, databases, logs, pid files) lives here.
VDD_SLURM_HOME=$(realpath -m "${VDD_SLURM_HOME:-/tmp/vdd-slurm}")
STATE=$VDD_SLURM_HOME

ETC=$STATE/etc
RUN=$STATE/run
LOGS=$STATE/log
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_DIR=$STATE/mariadb
DB_DATA=$DB_DIR/data
DB_SOCKET=$DB_DIR/mariadb.sock
# Marks a folder made by start.sh; stop.sh --purge only deletes such folders.
MARKER=$STATE/.vdd-slurm-state

export SLURM_CONF=$ETC/slurm.conf

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_of NAME PIDFILE: print the pid if PIDFILE names a live process whose
# command is NAME (guards against a stale pid file and a reused pid). A
# daemon removes its pid file as it exits, hence the quiet reads.
pid_of() {
    local name=$1 pidfile=$2 pid stat
    pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile") || return 1
    [[ -n $pid ]] || return 1
    stat=$(cat 2>/dev/null "/proc/$pid/stat") || return 1
    # /proc/PID/stat is "PID (COMM) STATE ...". An exited daemon whose parent
    # has not reaped it yet is a zombie (state Z): not running.
    [[ $stat == "$pid ($name) "* && $stat != *") Z "* ]] || return 1
    printf '%s\n' "$pid"
}

is_running() { pid_of "$1" "$2" >/dev/null; }

# The daemons, in start order: NAME:PIDFILE.
DAEMONS=(
    "munged:$RUN/munged.pid"
    "mariadbd:$RUN/mariadbd.pid"
    "slurmdbd:$RUN/slurmdbd.pid"
    "slurmctld:$RUN/slurmctld.pid"
    "slurmd:$RUN/slurmd.pid"
)
