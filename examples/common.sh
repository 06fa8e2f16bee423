# Shared helpers of the example scripts (sourced, not run). Environment variables understood by every script:
#
#   DATA_ROOT  folder holding the converted datasets (default: data), e.g. data/ms_inhouse/{train,test}
#   RUNS       folder for runs, predictions and reports (default: runs)
#   LONGISEG   the longiseg command (default: longiseg; e.g. "python -m longiseg")
#   PYTHON     the Python interpreter with longiseg installed (default: python)
#   EXTRA      extra config overrides appended to every training run, e.g. for a smoke test:
#              EXTRA="trainer.max_epochs=1 trainer.steps_per_epoch=2 trainer.batch_size=4"
#
# Runs resume from RUN/last.pt when interrupted; predictions that already exist are kept. Every script stops
# at the first failing step (also one inside "$(...)": inherit_errexit), with its exit status.

set -euo pipefail
shopt -s inherit_errexit

# -h/--help: the calling script's header comment (usage, needs, writes); other options are not the scripts'.
# At most one argument, the dataset: a second one was ignored without a word.
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
    exit 0
fi
if [[ "${1:-}" == -* ]]; then
    echo "$0: error: unknown option '$1' (the scripts take a dataset name; see $0 --help)" >&2
    exit 2
fi
if (($# > 1)); then
    echo "$0: error: expected at most one argument (the dataset), got $#: $*; see $0 --help" >&2
    exit 2
fi

EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIGS="$EXAMPLES_DIR/configs"
DATA_ROOT="${DATA_ROOT:-data}"
RUNS="${RUNS:-runs}"
LONGISEG="${LONGISEG:-longiseg}"
PYTHON="${PYTHON:-python}"
EXTRA="${EXTRA:-}"

# model_dim NAME -> "2.5D" or "3D" (from the registry). Fails with one line on stderr when $PYTHON cannot
# import longiseg or the model is unknown (with the closest names).
model_dim() {
    "$PYTHON" -c '
import sys
try:
    import longiseg
except ImportError as err:
    sys.exit(f"error: {sys.argv[2]} cannot import longiseg ({err}); set PYTHON to the interpreter with longiseg")
try:
    print(longiseg.model_info(sys.argv[1]).dim)
except (ValueError, TypeError) as err:
    sys.exit(f"error: model {sys.argv[1]!r}: {err}")
' "$1" "$PYTHON" || {
        local rc=$?
        # exit 1: the one-line message above; anything else (127: no such command) is explained here
        ((rc == 1)) || echo "error: cannot look up the dimension of model '$1' with PYTHON=$PYTHON (exit $rc)" >&2
        return "$rc"
    }
}

# config_for DATASET MODEL -> the example config of the model's family, e.g. configs/msseg2_3d.yaml
#   Call it as  config="$(config_for ...)"  on a line of its own: a failure inside an argument's "$(...)"
#   would not stop the script.
config_for() {
    local dim
    dim="$(model_dim "$2")" || return
    if [[ "$dim" == "3D" ]]; then
        echo "$CONFIGS/$1_3d.yaml"
    else
        echo "$CONFIGS/$1_2.5d.yaml"
    fi
}

# size_overrides DATASET MODEL -> overrides needed because of a model's size constraint.
# MSSEG-2 uses crops of 80; the 2.5D U-Nets and Swin UNETR need sizes divisible by 32, so they use 96.
size_overrides() {
    if [[ "$1" == "msseg2" ]]; then
        case "$2" in
            dynunet_2d*|longi_unet_dw_2d*|longi_unet_concat_2d*|swin_unetr_3d*)
                echo "data.crop_size=96 inference.patch_size=96" ;;
        esac
    fi
}

# best_checkpoint RUN_DIR -> RUN_DIR/best.pt if it exists, else RUN_DIR/last.pt
best_checkpoint() {
    if [[ -f "$1/best.pt" ]]; then echo "$1/best.pt"; else echo "$1/last.pt"; fi
}

# train_and_predict CONFIG TRAIN_DIR TEST_DIR RUN_DIR PRED_DIR [KEY=VALUE ...]
#   Trains (resuming if RUN_DIR/last.pt exists) with the overrides, then predicts TEST_DIR into PRED_DIR.
#   EXTRA comes first and the script's own KEY=VALUE last (the last value of a key wins): what a script varies
#   (a patch size, a loss strategy, the model) is never replaced by an EXTRA that sets the same key.
train_and_predict() {
    local config="$1" train_dir="$2" test_dir="$3" run_dir="$4" pred_dir="$5"
    shift 5
    # shellcheck disable=SC2206  # EXTRA is a whitespace-separated list of KEY=VALUE
    local overrides=($EXTRA)
    overrides+=("$@")
    local args=(train "$config" --data "$train_dir" --output "$run_dir")
    [[ -f "$run_dir/last.pt" ]] && args+=(--resume)
    ((${#overrides[@]})) && args+=(--set "${overrides[@]}")
    echo ">>> $LONGISEG ${args[*]}"
    $LONGISEG "${args[@]}"
    echo ">>> predicting $test_dir -> $pred_dir"
    $LONGISEG predict --checkpoint "$(best_checkpoint "$run_dir")" --input "$test_dir" --output "$pred_dir" \
        --skip-existing
}

# evaluate_report REPORT_DIR TEST_DIR PRED_DIR...: one report of the prediction folders (the first is the t-test
#   reference) against TEST_DIR. The report is the script's own, so a rerun (or more EXTRA_PREDICTIONS)
#   replaces it (--overwrite replaces only report files).
evaluate_report() {
    local report="$1" test_dir="$2"
    shift 2
    $LONGISEG evaluate "$@" "$test_dir" --out "$report" --overwrite
    echo "report: $report/table.txt"
}

# require_dir DIR WHAT: fail with a pointer to examples/README.md when a dataset folder is missing
require_dir() {
    if [[ ! -d "$1" ]]; then
        echo "error: $2 folder $1 does not exist; see examples/README.md for how to prepare it" >&2
        exit 2
    fi
}
