#!/usr/bin/env bash
# Run one line of a commands file written by `calibrate validate ... --emit-commands`:
# line number $SLURM_ARRAY_TASK_ID (counted from 1), and exit with that line's status.
#
#   calibrate validate ... --out runs/grid --emit-commands > commands.txt
#   sbatch --array=1-$(wc -l < commands.txt) examples/slurm/array.sh commands.txt
#
# --array: one task per line, 1 to the number of lines (`wc -l < commands.txt`). Append %N to
# run at most N tasks at once (--array=1-120%20). A range given to sbatch on the command line
# wins over the #SBATCH lines below, so this script needs no edit when the grid changes.
#
# Submit from the folder where you ran --emit-commands: the lines hold --out paths relative to
# it (Slurm starts each task in the folder sbatch was called from), or emit with an absolute
# --out. Every line is `calibrate train ... --continue`: it starts its run, resumes it from its
# last checkpoint, or does nothing if the run is complete, so resubmitting the same array
# (after a time limit, a preemption or a node failure) redoes only what is missing.
#
# A quick check outside Slurm:  SLURM_ARRAY_TASK_ID=1 bash examples/slurm/array.sh commands.txt
#
# The resources are placeholders for one run; adapt them to your cluster and model.
#SBATCH --job-name=calibrate-grid
#SBATCH --output=slurm-%A_%a.out
#SBATCH --time=04:00:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
# For GPU runs (lines emitted with --device cuda), one GPU per task:
##SBATCH --gres=gpu:1
##SBATCH --partition=gpu
# Or set the range here instead of on the command line:
##SBATCH --array=1-120%20

set -u

# Load the environment that has calibrate on the PATH, e.g.:
# source "$HOME/venvs/calibrate/bin/activate"

file="${1:-commands.txt}"
task="${SLURM_ARRAY_TASK_ID:-}"

if [[ -z "$task" ]]; then
    echo "error: SLURM_ARRAY_TASK_ID is not set: submit with sbatch --array=1-N, or set it for a check (SLURM_ARRAY_TASK_ID=1 bash $0 $file)" >&2
    exit 2
fi
if [[ ! "$task" =~ ^[0-9]+$ ]] || (( 10#$task < 1 )); then
    echo "error: SLURM_ARRAY_TASK_ID='$task' is not a line number (1, 2, ...)" >&2
    exit 2
fi
task=$((10#$task))
if [[ ! -f "$file" || ! -r "$file" ]]; then
    echo "error: cannot read the commands file '$file' (from $(pwd))" >&2
    exit 2
fi

lines=$(awk 'END { print NR }' "$file")
if (( task > lines )); then
    echo "error: task $task is beyond the $lines line(s) of '$file': submit with --array=1-$lines" >&2
    exit 2
fi
line=$(awk -v n="$task" 'NR == n { print; exit }' "$file")
if [[ -z "${line//[[:space:]]/}" ]]; then
    echo "error: line $task of '$file' is empty" >&2
    exit 2
fi

echo "[$(date '+%Y-%m-%d %H:%M:%S')] ${SLURM_JOB_ID:+job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID} }task $task of $lines on $(hostname): $line" >&2
exec bash -c "$line"
