#!/usr/bin/env bash
# SegMaST paper, section 4.1 and Fig. 3: imbalance-aware loss accumulation. Trains SegMaST three times with
# the progression loss over all stable samples ("whole"), none of them ("none") and a balanced subset
# ("partial", the paper's strategy), then compares B / P / NP Dice and lesion F1 in one report
# (t-tests against "partial").
#
# Usage:  examples/ablation_loss_strategy.sh [DATASET]      (default ms_inhouse, the paper's dataset)
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test (examples/README.md).
# Writes: $RUNS/DATASET/MODEL_loss_STRATEGY/, $RUNS/DATASET/predictions/MODEL_loss_STRATEGY/,
#         $RUNS/DATASET/report_loss/ (replaced by a rerun)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-ms_inhouse}"
model="${MODEL:-segmast_ms}"
train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

config="$(config_for "$dataset" "$model")"
pred_dirs=()
for strategy in partial whole none; do
    name="${model}_loss_$strategy"  # the model in the name: another MODEL gets runs of its own
    train_and_predict "$config" "$train_dir" "$test_dir" "$RUNS/$dataset/$name" "$RUNS/$dataset/predictions/$name" \
        "model.name=$model" "loss.strategy=$strategy"
    pred_dirs+=("$RUNS/$dataset/predictions/$name")
done

evaluate_report "$RUNS/$dataset/report_loss" "$test_dir" "${pred_dirs[@]}"
echo "box plots: $RUNS/$dataset/report_loss/boxplot.png"
