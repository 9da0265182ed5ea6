#!/usr/bin/env bash
# A single-node Slurm for the cluster tests (tests/test_cluster_slurm.py): Debian's slurm-wlm + munge,
# configured for this machine and started in the background (no systemd needed).
#
# Never fails the caller: it always exits 0. It writes one line to $TAILROBUST_SLURM_STATUS
# (default /tmp/tailrobust-slurm.status): "ready" when a test job ran, otherwise "unavailable: <why>",
# which the Slurm tests print as their skip reason (the same grid then runs through submitit's local executor).
# Only a slurm.conf this script wrote itself (it carries the marker below) is ever replaced.
set -u
STATUS_FILE="${TAILROBUST_SLURM_STATUS:-/tmp/tailrobust-slurm.status}"
MARKER="# written by tailrobust scripts/ci_slurm.sh"
CONF=/etc/slurm/slurm.conf
LOG_DIR=/tmp/tailrobust-slurm
started=$(date +%s)

give_up() {
    echo "unavailable: $*" > "$STATUS_FILE"
    echo "ci_slurm: Slurm is not available ($*); the Slurm tests skip and the grid runs through submitit's local executor" >&2
    exit 0
}

ready_now() {  # a partition answers with an idle node
    command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix)'
}

if ready_now; then
    echo "ready" > "$STATUS_FILE"
    echo "ci_slurm: a Slurm partition is already up"
    exit 0
fi
[ "$(id -u)" = 0 ] || give_up "not root (uid $(id -u)): cannot install and start slurmctld/slurmd"
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || give_up "no apt-get to install slurm-wlm and munge"
    echo "ci_slurm: installing slurm-wlm and munge (apt)"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y -qq slurm-wlm munge) \
        > /tmp/tailrobust-slurm-apt.log 2>&1; then
        give_up "apt-get install slurm-wlm munge failed (see /tmp/tailrobust-slurm-apt.log)"
    fi
fi
mkdir -p "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge /var/log/munge /var/lib/munge /etc/slurm

# munge: a key and its daemon (slurm authenticates every RPC through it)
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then runuser -u munge -- munged --force 2>"$LOG_DIR/munged.err"
    else munged --force 2>"$LOG_DIR/munged.err"; fi
    sleep 1
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || give_up "munged did not start: $(tail -n1 "$LOG_DIR/munged.err" 2>/dev/null)"
fi

# slurm.conf for one node with this machine's CPUs and memory; no cgroups (containers often lack them)
node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    give_up "$CONF exists and was not written by this script (left untouched)"
fi
cat > "$CONF" <<EOF
$MARKER
ClusterName=tailrobust-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits until its credential expires (default 120 s) before it may start again
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# schedule a requeued job as soon as it is eligible (defaults: main loop every 60 s, backfill every 30 s)
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

last_error() { grep -h 'error' "$@" 2>/dev/null | grep -v -i 'pmix' | tail -n1; }
pgrep -x slurmctld >/dev/null || slurmctld 2>"$LOG_DIR/slurmctld.err" \
    || give_up "slurmctld did not start: $(last_error "$LOG_DIR/slurmctld.err" "$LOG_DIR/slurmctld.log")"
pgrep -x slurmd >/dev/null || slurmd -N "$node" 2>"$LOG_DIR/slurmd.err" \
    || give_up "slurmd did not start: $(last_error "$LOG_DIR/slurmd.err" "$LOG_DIR/slurmd.log")"
for _ in $(seq 1 30); do
    ready_now && break
    sleep 1
done
ready_now || give_up "no idle node after 30 s: $(timeout 5 sinfo -h 2>&1 | head -n1); $(tail -n1 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
if ! out=$(cd /tmp && timeout 60 srun -N1 -n1 -t 1 echo slurm-ok 2>&1) || [ "$out" != "slurm-ok" ]; then
    give_up "a test job did not run: $(echo "$out" | tail -n1)"
fi
echo "ready" > "$STATUS_FILE"
echo "ci_slurm: single-node Slurm up on $node ($cpus CPUs) in $(( $(date +%s) - started )) s"
exit 0
