#!/usr/bin/env bash
# Start a single-node Slurm cluster on localhost for tests/test_slurm.py (CI: .ci/run calls this).
#
# Debian's slurm-wlm + munge packages; slurmctld and slurmd on this machine, one node with the
# machine's real CPU count and memory (`slurmd -C`), one partition `debug`. No cgroups
# (proctrack/linuxproc, task/none), so it runs in containers. No slurmdbd: the Snakemake Slurm
# plugin queries job states with `squeue` when told so (`--slurm-status-command squeue`), which
# works when slurmctld keeps finished jobs long enough (MinJobAge below). Finished jobs are also
# written by jobcomp/filetxt to $DIR/jobcomp.log, which the test reads to prove the jobs ran there.
#
# The configuration is /etc/slurm/slurm.conf, where every Slurm command looks (the plugin's job
# step drops SLURM_* variables, SLURM_CONF included, so another path would not reach `srun`); a
# slurm.conf that this script did not write (a real site) is never touched: exit status 3.
# State and logs live in $PCLBENCH_SLURM_DIR (default /var/tmp/pclbench-slurm). Idempotent: a
# running cluster is left alone. Needs root (apt, daemons). Exit status 0 when the node is idle.
set -euo pipefail
DIR=${PCLBENCH_SLURM_DIR:-/var/tmp/pclbench-slurm}
SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# Written by tests/slurm/start_cluster.sh"

if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
  echo "start_cluster: $SLURM_CONF exists and was not written by this script; not touching a real cluster" >&2
  exit 3
fi
if [[ -f $SLURM_CONF ]] && scontrol ping 2>/dev/null | grep -q UP \
    && sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "start_cluster: Slurm already running ($SLURM_CONF)"; exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "start_cluster: needs root to install and start slurmctld/slurmd/munged" >&2; exit 3
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  echo "start_cluster: installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: the packages create the key; make one if a minimal image did not.
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

mkdir -p "$DIR"/{state,spool,log} /etc/slurm
HOST=$(hostname -s)
# The node's real hardware, as slurmd itself detects it (CPUs, sockets, cores, memory).
# NodeAddr/SlurmctldHost address 127.0.0.1: no need for the host name to resolve (minimal containers).
NODE=$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]*/NodeName=$HOST NodeAddr=127.0.0.1/")
cat > "$SLURM_CONF.tmp" <<CONF
$MARKER: a single-node test cluster on localhost.
ClusterName=pclbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
# Keep finished jobs in slurmctld for a day: the Snakemake plugin's squeue status query needs them.
MinJobAge=86400
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
MpiDefault=none
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
mv "$SLURM_CONF.tmp" "$SLURM_CONF"

# (Re)start the daemons with this configuration (-c: forget any earlier state of a previous run).
for pidfile in "$DIR/slurmctld.pid" "$DIR/slurmd.pid"; do
  if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then kill "$(cat "$pidfile")"; sleep 1; fi
done
/usr/sbin/slurmctld -c -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

for _ in $(seq 60); do
  state=$(sinfo -h -N -o %T 2>/dev/null | head -n1 || true)
  if [[ $state == idle ]]; then echo "start_cluster: node $HOST idle ($SLURM_CONF)"; exit 0; fi
  sleep 1
done
echo "start_cluster: the node did not become idle (state: ${state:-none}); logs in $DIR/log" >&2
tail -n 20 "$DIR"/log/*.log >&2 || true
exit 1
