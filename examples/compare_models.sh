#!/usr/bin/env bash
# SegMaST paper, Tables 1-3: train SegMaST and the baselines on one dataset, predict its test set and compare
# all models in one report (paired t-tests of every model against SegMaST, the first column).
#
# Usage:  examples/compare_models.sh ms_inhouse|msseg2|ucsf_altpd
# Needs:  $DATA_ROOT/DATASET/train and $DATA_ROOT/DATASET/test in the library layout (examples/README.md).
# Writes: $RUNS/DATASET/MODEL/ (checkpoints, metrics.csv), $RUNS/DATASET/predictions/MODEL/ and the report
#         $RUNS/DATASET/report/ (table.txt, summary.csv/json, per_case.csv, stratified.csv, boxplot.png;
#         replaced by a rerun).
# Options (environment): MODELS="segmast_ms segformer_ms" to train a subset (SegMaST first: it is the
#         t-test reference); EXTRA_PREDICTIONS="DIR ..." adds prediction folders made elsewhere (e.g. nnU-Net
#         predictions imported with longiseg.bridges.import_nnunet_predictions); see common.sh for the rest.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dataset="${1:-}"
case "$dataset" in
    ms_inhouse)  # Table 1 (nnU-Net: run it with nnU-Net and pass its predictions in EXTRA_PREDICTIONS)
        default_models="segmast_ms segformer_ms dynunet_2d_ms swin_unetr_3d_ms longi_unet_dw_ms dynunet_cs_ms" ;;
    msseg2)      # Table 2
        default_models="segmast_ms segformer_ms dynunet_2d_ms swin_unetr_3d_ms longi_unet_dw_ms dynunet_3d_ms" ;;
    ucsf_altpd)  # Table 3
        default_models="segmast_glioma segformer_glioma dynunet_2d_glioma swin_unetr_3d_glioma longi_unet_dw_glioma dynunet_3d_glioma" ;;
    *)
        echo "usage: $0 ms_inhouse|msseg2|ucsf_altpd" >&2
        exit 2 ;;
esac
read -r -a models <<< "${MODELS:-$default_models}"
read -r -a extra_predictions <<< "${EXTRA_PREDICTIONS:-}"

train_dir="$DATA_ROOT/$dataset/train"
test_dir="$DATA_ROOT/$dataset/test"
require_dir "$train_dir" "training"
require_dir "$test_dir" "test"

pred_dirs=()
for model in "${models[@]}"; do
    config="$(config_for "$dataset" "$model")"
    read -r -a size <<< "$(size_overrides "$dataset" "$model")"
    train_and_predict "$config" "$train_dir" "$test_dir" "$RUNS/$dataset/$model" \
        "$RUNS/$dataset/predictions/$model" "model.name=$model" "${size[@]}"
    pred_dirs+=("$RUNS/$dataset/predictions/$model")
done

evaluate_report "$RUNS/$dataset/report" "$test_dir" "${pred_dirs[@]}" "${extra_predictions[@]}"
