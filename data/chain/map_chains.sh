#!/usr/bin/env bash
# Coarse-grain the chain reference trajectories with `cgsim map` (METIS, ~4 fine beads per bead).
# Usage: bash data/chain/map_chains.sh train|test     (run from the repository root)
set -euo pipefail
split=${1:?usage: map_chains.sh train|test}
for pdb in data/chain/"$split"/seq_*.pdb; do
  name=$(basename "$pdb" .pdb)
  for traj in data/chain/"$split"/"$name".xtc data/chain/"$split"/"$name"_long.xtc; do
    [ -f "$traj" ] || continue
    stem=$(basename "$traj" .xtc)
    out=data/chain/mapped/"$split"/"$stem"
    [ -f "$out/mapping.yaml" ] && continue
    .venv/bin/cgsim map input.trajectory="$traj" input.topology="$pdb" mapping=metis mapping.atoms_per_bead=4 \
      trajectory_format=xtc output="$out" progress=false hydra.run.dir=outputs/hydra/map/"$split"_"$stem"
  done
done
