#!/usr/bin/env bash
# SegMaST paper, section 4.1 and Fig. 3: imbalance-aware loss accumulation. Trains SegMaST three times with
# the progression loss over all stable samples ("whole"), none of them ("none") and a balanced subset
# ("partial", the paper's strategy), then compares B / P / NP Dice and lesion F1 in one report
# (t-tests against "partial").
#
# Usage:  examples/ablation_loss_strategy.sh [DATASET]      (default ms_inhouse, the paper's dataset)
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test (examples/README.md).
# Writes: $RUNS/DATASET/loss_STRATEGY/, $RUNS/DATASET/predictions/loss_STRATEGY/, $RUNS/DATASET/report_loss/
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-ms_inhouse}"
model="${MODEL:-segmast_ms}"
train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

pred_dirs=()
for strategy in partial whole none; do
    train_and_predict "$(config_for "$dataset" "$model")" "$train_dir" "$test_dir" \
        "$RUNS/$dataset/loss_$strategy" "$RUNS/$dataset/predictions/loss_$strategy" \
        "model.name=$model" "loss.strategy=$strategy"
    pred_dirs+=("$RUNS/$dataset/predictions/loss_$strategy")
done

$LONGISEG evaluate "${pred_dirs[@]}" "$test_dir" --out "$RUNS/$dataset/report_loss"
echo "report: $RUNS/$dataset/report_loss/table.txt (box plots: boxplot.png)"
