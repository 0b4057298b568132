#!/bin/bash
# Submits the whole neuron-swap study: endpoints, then the three depths on
# GPUs, then their analysis on the CPU partition, each waiting for the one
# before. Arguments go to depths.sbatch and analysis.sbatch, for example
#   bash scripts/slurm/submit_all.sh --config.curve.epochs=100
set -euo pipefail
cd "$(dirname "$0")/../.."

endpoints=$(sbatch --parsable scripts/slurm/endpoints.sbatch)
depths=$(sbatch --parsable --dependency="afterok:$endpoints" \
  scripts/slurm/depths.sbatch "$@")
analysis=$(sbatch --parsable --dependency="afterok:$depths" \
  scripts/slurm/analysis.sbatch "$@")
echo "endpoints: $endpoints  depths: $depths  analysis: $analysis"
