#!/usr/bin/env bash
# Coarse-grain the electrolyte reference runs with `cgsim map`: METIS, ~7 atoms per bead, molecules of
# <= 15 atoms kept whole (conf/mapping/metis.yaml) (Li+ = 1 bead, TFSI- = 1 bead). Charges come from each run's sidecar
# (extra.particle_charges, already scaled), so ion beads carry them for conductivity.
# Usage: bash data/electrolyte/map_electrolyte.sh train|test [--force]   (from the repository root)
set -euo pipefail
split=${1:?usage: map_electrolyte.sh train|test [--force]}
force=${2:-}
frames() { .venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["n_frames"])' "$1"; }
for run in data/electrolyte/"$split"/*/; do
  run=${run%/}
  name=$(basename "$run")
  pdb=$(ls "$run"/*.pdb 2>/dev/null | head -1 || true)
  [ -n "$pdb" ] || { echo "skip $name: no trajectory yet (export one with export_partial=true)"; continue; }
  traj=${pdb%.pdb}.xtc
  out=data/electrolyte/mapped/"$split"/"$name"
  # up to date when the mapped sidecar holds as many frames as the run's own sidecar (file times
  # are no guide in a fresh clone, where every file is as new as the checkout)
  if [ -f "$out/mapping.yaml" ] && [ -f "$out/beads.json" ] && [ "$force" != "--force" ] && \
     [ "$(frames "$out/beads.json")" = "$(frames "${pdb%.pdb}.json")" ]; then continue; fi
  rm -rf "$out"
  .venv/bin/cgsim map input.trajectory="$traj" input.topology="$pdb" mapping=metis mapping.atoms_per_bead=7 \
    trajectory_format=xtc output="$out" progress=false \
    hydra.run.dir=outputs/hydra/map/electrolyte_"$split"_"$name"
done
