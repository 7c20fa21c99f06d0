#!/usr/bin/env bash
# Submit N SLURM GPU jobs, each running one FireWorks worker (rapidfire) until the queue is empty
# or the walltime approaches. Usage: launchers/submit_gpu_workers.sh [N]
set -euo pipefail
N=${1:-1}
export TDPHONON_HOME=${TDPHONON_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$TDPHONON_HOME"
qlaunch -l launchers/my_launchpad.yaml -w my_fworker.yaml -q launchers/my_qadapter.yaml \
  rapidfire --nlaunches "$N" --maxjobs_queue 100
