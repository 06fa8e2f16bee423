#!/usr/bin/env bash
# SegMaST paper, appendix Fig. 5: patch size under lesion-weighted cropping. Trains SegMaST with training
# crops (and inference windows) of 40^2 ... 128^2 and compares baseline Dice and progression F1.
#
# Usage:  examples/ablation_patch_size.sh [DATASET]         (default ms_inhouse, the paper's dataset)
#         SIZES="40 64 96 128" examples/ablation_patch_size.sh  (default: 40 64 80 96 112 128)
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test (examples/README.md).
# Writes: $RUNS/DATASET/patch_SIZE/, $RUNS/DATASET/predictions/patch_SIZE/, $RUNS/DATASET/report_patch/
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-ms_inhouse}"
model="${MODEL:-segmast_ms}"
read -r -a sizes <<< "${SIZES:-40 64 80 96 112 128}"
train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

pred_dirs=()
for size in "${sizes[@]}"; do
    train_and_predict "$(config_for "$dataset" "$model")" "$train_dir" "$test_dir" \
        "$RUNS/$dataset/patch_$size" "$RUNS/$dataset/predictions/patch_$size" \
        "model.name=$model" "data.crop_size=$size" "inference.patch_size=$size"
    pred_dirs+=("$RUNS/$dataset/predictions/patch_$size")
done

# The largest patch first: it is the paper's setting and the t-test reference.
reversed=()
for ((i = ${#pred_dirs[@]} - 1; i >= 0; i--)); do reversed+=("${pred_dirs[i]}"); done
$LONGISEG evaluate "${reversed[@]}" "$test_dir" --out "$RUNS/$dataset/report_patch"
echo "report: $RUNS/$dataset/report_patch/table.txt"
