#!/usr/bin/env bash
# SegMaST paper, section 4.3 and Fig. 4: three timepoints. SegMaST takes baseline, FU1 and FU2 at once and
# predicts the baseline mask and one progression mask per follow-up; the number of timepoints is read from
# the data, so the same config is used. Prints B / FU1 / FU2 Dice and lesion F1 split into P and NP and
# draws entropy maps of FU1 and FU2 with the reference contours.
#
# Usage:  examples/three_timepoints.sh [DATASET]            (default ms_inhouse_3tp)
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test whose cases have three timepoints
#         (t0_*, t1_*, t2_* images, baseline_mask, progression_t1, progression_t2; examples/README.md).
#         To try it without data:  longiseg cohort demo3 --set num_timepoints=3 and split demo3/cohort
#         with examples/convert_datasets.py layout demo3/cohort $DATA_ROOT/ms_inhouse_3tp.
# Writes: $RUNS/DATASET/MODEL/, $RUNS/DATASET/predictions/MODEL/, $RUNS/DATASET/report/ with
#         followups.csv and entropy.png
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-ms_inhouse_3tp}"
model="${MODEL:-segmast_ms}"
train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

# the model in the folder names: another MODEL gets a run of its own
train_and_predict "$CONFIGS/ms_inhouse_2.5d.yaml" "$train_dir" "$test_dir" "$RUNS/$dataset/$model" \
    "$RUNS/$dataset/predictions/$model" "model.name=$model"
"$PYTHON" "$EXAMPLES_DIR/followup_table.py" "$RUNS/$dataset/predictions/$model" "$test_dir" \
    --out "$RUNS/$dataset/report"
