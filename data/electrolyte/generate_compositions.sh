#!/usr/bin/env bash
# The electrolyte reference runs added for issue 24 (compositions across EO:Li 5-40, chain lengths
# 10-40), as two queues that each run one composition after the other on one thread. Every run is
# resumable: re-running this script (or the single command it prints) continues a killed run from
# its committed `.run/` state; a finished run is skipped by `cgsim generate` itself.
# Usage (from the repository root): bash data/electrolyte/generate_compositions.sh 1|2 [PLATFORM]
#   queue 1: the three new small/medium training runs, then the large dilute one
#   queue 2: the second held-out composition (10 ns), then one training run
# PLATFORM defaults to OpenCL (pocl, 1.8x faster per thread; BENCHMARKS.md) and falls back to CPU.
set -euo pipefail
queue=${1:?usage: generate_compositions.sh 1|2 [PLATFORM]}
platform=${2:-OpenCL}
if [ "$platform" = OpenCL ] && ! .venv/bin/python -c \
  'import openmm, sys; sys.exit(0 if "OpenCL" in [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())] else 1)'; then
  platform=CPU
fi
hmr="system.hydrogen_mass=3.0 system.timestep=0.004"
run() {  # split name n_chains chain_length eo_li seed [extra...]
  local split=$1 name=$2 nc=$3 n=$4 r=$5 seed=$6; shift 6
  echo "== $split/$name"
  .venv/bin/cgsim generate system=electrolyte system.n_chains="$nc" system.chain_length="$n" \
    system.eo_li_ratio="$r" system.seed="$seed" $hmr "$@" \
    output=data/electrolyte/"$split"/"$name" threads=1 platform="$platform" progress=false \
    hydra.run.dir=outputs/hydra/generate/"$name"
}
case $queue in
  1)
    run train peo6x15_eoli5 6 15 5 6      # 18 LiTFSI, concentrated end
    run train peo24x10_eoli24 24 10 24 8  # 10 LiTFSI, shortest chains
    run train peo10x40_eoli40 10 40 40 9  # 10 LiTFSI, dilute end, longest chains
    ;;
  2)
    run test peo9x16_eoli14 9 16 14 10 system.production_time=10000  # held out: 10 LiTFSI, 10 ns
    run train peo4x35_eoli10 4 35 10 7    # 14 LiTFSI
    ;;
  *) echo "queue must be 1 or 2" >&2; exit 2 ;;
esac
