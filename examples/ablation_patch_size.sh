#!/usr/bin/env bash
# SegMaST paper, appendix Fig. 5: patch size under lesion-weighted cropping. Trains SegMaST with training
# crops (and inference windows) of 40^2 ... 128^2 and compares baseline Dice and progression F1.
#
# Usage:  examples/ablation_patch_size.sh [DATASET]         (default ms_inhouse, the paper's dataset)
#         SIZES="40 64 96 128" examples/ablation_patch_size.sh  (default: 40 64 80 96 112 128)
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test (examples/README.md).
# Writes: $RUNS/DATASET/MODEL_patch_SIZE/, $RUNS/DATASET/predictions/MODEL_patch_SIZE/,
#         $RUNS/DATASET/report_patch/ (the largest size first, the t-test reference; replaced by a rerun)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-ms_inhouse}"
model="${MODEL:-segmast_ms}"
read -r -a sizes <<< "${SIZES:-40 64 80 96 112 128}"
for size in "${sizes[@]}" ""; do
    if [[ ! "$size" =~ ^[1-9][0-9]*$ && ( -n "$size" || ${#sizes[@]} -eq 0 ) ]]; then
        echo "$0: error: SIZES must be positive whole numbers, got '${SIZES:-}'" >&2
        exit 2
    fi
done
# The largest patch first: it is the paper's setting and the t-test reference.
mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | sort -rnu)
train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

config="$(config_for "$dataset" "$model")"
pred_dirs=()
for size in "${sizes[@]}"; do
    name="${model}_patch_$size"  # the model in the name: another MODEL gets runs of its own
    train_and_predict "$config" "$train_dir" "$test_dir" "$RUNS/$dataset/$name" "$RUNS/$dataset/predictions/$name" \
        "model.name=$model" "data.crop_size=$size" "inference.patch_size=$size"
    pred_dirs+=("$RUNS/$dataset/predictions/$name")
done

evaluate_report "$RUNS/$dataset/report_patch" "$test_dir" "${pred_dirs[@]}"
