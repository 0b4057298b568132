# Shared set-up of the mcjax sbatch scripts; sourced, not run.
#
# Environment variables (set them before `sbatch`, which passes the
# submitting shell's environment to the job by default):
#   MCJAX_ROOT         the mcjax checkout; default: the folder sbatch was run
#                      from ($SLURM_SUBMIT_DIR).
#   MCJAX_VENV         a virtual environment to activate; default:
#                      $MCJAX_ROOT/.venv when it exists, else the python3 on
#                      PATH.
#   MCJAX_DATA_DIR     folder with the datasets; read by mcjax.data.load;
#                      default: unset, so the loader searches ./data, ~/data
#                      and /usr/share/datasets/fashion-mnist.
#   MCJAX_RESULTS_DIR  where experiment workdirs go; default:
#                      $MCJAX_ROOT/runs.

set -euo pipefail

export MCJAX_ROOT="${MCJAX_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
export MCJAX_RESULTS_DIR="${MCJAX_RESULTS_DIR:-$MCJAX_ROOT/runs}"
MCJAX_VENV="${MCJAX_VENV:-}"
if [[ -z "$MCJAX_VENV" && -d "$MCJAX_ROOT/.venv" ]]; then
  MCJAX_VENV="$MCJAX_ROOT/.venv"
fi
if [[ -n "$MCJAX_VENV" ]]; then
  # shellcheck disable=SC1091
  source "$MCJAX_VENV/bin/activate"
fi
if [[ -n "${MCJAX_DATA_DIR:-}" ]]; then
  export MCJAX_DATA_DIR
fi
cd "$MCJAX_ROOT"
mkdir -p "$MCJAX_RESULTS_DIR"

# Runs `python3 -m experiments.run "$@"` in the background, so that a
# SIGTERM reaches Python. SLURM sends it before the time limit
# (`#SBATCH --signal=B:TERM@120`) or on preemption. Python then saves a
# checkpoint and exits, and the job goes back in the queue, to resume from
# that checkpoint when it starts again. A clean exit ends the job.
run_experiment() {
  echo "mcjax: job ${SLURM_JOB_ID:-local} task ${SLURM_ARRAY_TASK_ID:-none}" \
    "on $(hostname): python3 -m experiments.run $*"
  python3 -m experiments.run "$@" &
  local child=$! requeue=0 status=0
  trap 'echo "mcjax: SIGTERM, stopping python (pid $child) to requeue";
        kill -TERM "$child" 2>/dev/null; requeue=1' TERM
  # `wait` returns early when the trap fires; wait again for the exit.
  wait "$child" || status=$?
  if [[ "$requeue" == 1 ]]; then
    wait "$child" || true
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
      scontrol requeue "$SLURM_JOB_ID" || true
    fi
    return 0
  fi
  return "$status"
}
