#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying launcher=slurm for real (make slurm / make slurm-down).
#   scripts/slurm.sh up     install slurm + munge where root and apt-get allow, write .slurm/slurm.conf, start
#                           munged, slurmctld and slurmd, wait until sinfo shows the node idle; a second call
#                           finds it up. Where it cannot (not root, offline, no apt-get), it says why and exits 0:
#                           the SLURM tests then skip.
#   scripts/slurm.sh down   stop the daemons it started, by their pid files in .slurm/.
# Clients (sinfo, squeue, sbatch, tagrank -m launcher=slurm) need: export SLURM_CONF=$PWD/.slurm/slurm.conf
# (the tests set it themselves). Each CPU is one job slot: two one-CPU jobs run at once on two cores.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=$ROOT/.slurm
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
DAEMONS="slurmd slurmctld munged"   # stopped in this order, started in the reverse one

say() { echo "slurm: $*"; }

running() {  # running <daemon>: its pid file names a live process of that name
    local pid
    pid=$(cat "$DIR/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]
}

node_up() {  # the node takes jobs: idle, or running some (mix, alloc)
    case "$(sinfo -h -N -o %t 2>/dev/null | head -1)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then say "not root; 'sudo apt-get install slurmctld slurmd slurm-client munge' or the SLURM tests skip"; return 1; fi
    if ! command -v apt-get >/dev/null; then say "no apt-get here; install slurm and munge yourself or the SLURM tests skip"; return 1; fi
    say "installing slurmctld, slurmd, slurm-client and munge (apt-get)"
    if ! timeout 240 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge' >"$DIR/apt.log" 2>&1; then
        say "apt-get could not install slurm (offline? see $DIR/apt.log); the SLURM tests will skip"; return 1
    fi
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/munge"
    cat >"$CONF" <<CONF
# Written by scripts/slurm.sh (make slurm) for this machine; rewritten at each call.
ClusterName=tagrank
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
# Nothing here needs cgroups (not available in containers): processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# CPUs are the consumable resource: each job gets the CPUs it asks for, so one-CPU jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# A preempted or requeued job is stopped fast: SIGTERM, then SIGKILL after KillWait seconds.
KillWait=5
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    mkdir -p "$DIR"
    if running munged && running slurmctld && running slurmd && node_up; then
        say "up already (node $(hostname -s)); export SLURM_CONF=$CONF"; return 0
    fi
    install || return 0
    write_conf
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 700 "$DIR/munge"; chmod 600 "$DIR/munge/munge.key"
    running munged || munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || { say "munged did not start (see $DIR/log/munged.log); the SLURM tests will skip"; return 0; }
    running slurmctld || slurmctld -f "$CONF" || { say "slurmctld did not start (see $DIR/log/slurmctld.log)"; return 0; }
    running slurmd || slurmd -f "$CONF" || { say "slurmd did not start (see $DIR/log/slurmd.log)"; return 0; }
    for _ in $(seq 60); do
        if node_up; then say "up: node $(hostname -s), $(nproc) CPUs; export SLURM_CONF=$CONF"; return 0; fi
        sleep 1
    done
    say "the node did not come up idle within 60 s (see $DIR/log/); the SLURM tests will skip"
    sinfo -N 2>&1 | sed 's/^/slurm: /'
}

down() {
    local d pid
    for d in $DAEMONS; do
        if running "$d"; then
            pid=$(cat "$DIR/run/$d.pid")
            kill "$pid"
            for _ in $(seq 30); do [ -d /proc/"$pid" ] || break; sleep 0.5; done
            say "stopped $d ($pid)"
        fi
        rm -f "$DIR/run/$d.pid"
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
