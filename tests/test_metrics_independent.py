"""The metrics against an independent implementation (numpy + scipy.ndimage), on random and adversarial inputs.

The oracle below is written from the definitions of the SegMaST paper (section 3: Dice of B, P and NP with
the strict NP score, lesion-wise F1 and PPV without lesions below 11 mm^3, DAA as the share of correctly
classified follow-ups; Table 4 size bins; Figure 4 FU1/FU2) and of ``docs/metrics.md`` (26-connectivity,
size filter on both sides, the per-side greedy IoU > 0.1 matching, zero-division conventions, per patient
then mean (SD, ddof=0) over patients, lesion evolution rules), not from the library's code. Every comparison
is seeded; the fast variants run in the default selection, larger sweeps are marked slow.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from longiseg.metrics import (
    ResultsTable,
    dice,
    disease_activity_assessment,
    evaluate_folder,
    evaluate_longitudinal_case,
    lesion_detection,
    write_report,
)
from longiseg.metrics.evolution import lesion_evolution
from longiseg.metrics.stratified import SizeBins, stratified_lesion_metrics

# ----------------------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------------------


def o_dice(p: np.ndarray, g: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|); 1 when both are empty."""
    p, g = np.asarray(p, bool), np.asarray(g, bool)
    s = int(p.sum()) + int(g.sum())
    return 1.0 if s == 0 else 2.0 * int((p & g).sum()) / s


def o_structure(ndim: int, conn: int) -> np.ndarray:
    rank = {3: {6: 1, 18: 2, 26: 3}, 2: {4: 1, 8: 2}}[ndim][conn]
    return ndimage.generate_binary_structure(ndim, rank)


def o_label(mask: np.ndarray, spacing, min_vol: float = 0.0, conn: int = 26):
    """Components in raster order of their first voxel, those of volume >= min_vol kept (relabelled)."""
    mask = np.asarray(mask, bool)
    lab, n = ndimage.label(mask, o_structure(mask.ndim, conn))
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    vv = float(np.prod(spacing))
    keep = np.zeros(n + 1, bool)
    keep[1:] = counts[1:] * vv >= min_vol * (1 - 1e-12)
    new = np.zeros(n + 1, np.int64)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[lab], int(keep.sum()), counts[keep] * vv


def o_claims(iou: np.ndarray, thr: float) -> np.ndarray:
    """Rows in order take the unclaimed column of highest IoU (lowest index on ties); hit if > thr."""
    claimed = np.zeros(iou.shape[1], bool)
    hit = np.zeros(iou.shape[0], bool)
    for i in range(iou.shape[0]):
        r = np.where(claimed, 0.0, iou[i])
        if r.size:
            j = int(np.argmax(r))
            if r[j] > thr:
                hit[i], claimed[j] = True, True
    return hit


def o_global(iou: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one, pairs by decreasing IoU (ties: lower reference, then lower predicted label)."""
    ng, npr = iou.shape
    pairs = sorted((-iou[i, j], i, j) for i in range(ng) for j in range(npr) if iou[i, j] > thr)
    g, p = np.zeros(ng, bool), np.zeros(npr, bool)
    for _, i, j in pairs:
        if not g[i] and not p[j]:
            g[i], p[j] = True, True
    return g, p


def o_scores(tpg: int, ng: int, tpp: int, npr: int) -> tuple[float, float, float]:
    rec = tpg / ng if ng else 1.0
    prec = tpp / npr if npr else 1.0
    f1 = 0.0 if rec + prec == 0 else 2 * rec * prec / (rec + prec)
    return f1, prec, rec


def o_detect(pred, gt, spacing, min_vol=0.0, rule="iou", thr=0.1, conn=26) -> dict:
    gl, ng, gv = o_label(gt, spacing, min_vol, conn)
    pl, npr, pv = o_label(pred, spacing, min_vol, conn)
    inter = np.zeros((ng + 1, npr + 1), np.int64)
    np.add.at(inter, (gl.ravel(), pl.ravel()), 1)
    inter = inter[1:, 1:]
    gs, ps = np.bincount(gl.ravel(), minlength=ng + 1)[1:], np.bincount(pl.ravel(), minlength=npr + 1)[1:]
    union = gs[:, None] + ps[None, :] - inter
    iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
    if rule == "iou":
        gdet, pmat = o_claims(iou, thr), o_claims(iou.T, thr)
    elif rule == "iou_global":
        gdet, pmat = o_global(iou, thr)
    else:
        gdet, pmat = (inter > 0).any(1), (inter > 0).any(0)
    f1, prec, rec = o_scores(int(gdet.sum()), ng, int(pmat.sum()), npr)
    return dict(f1=f1, precision=prec, recall=rec, tp_gt=int(gdet.sum()), n_gt=ng, tp_pred=int(pmat.sum()),
                n_pred=npr, gdet=gdet, pmat=pmat, gl=gl, pl=pl, gv=gv, pv=pv, inter=inter,
                vv=float(np.prod(spacing)))


def o_persisting(pred_prog, gt_base, gt_prog, spacing, min_vol, conn=26, min_cov=0.1) -> tuple[int, int]:
    bl, nb, _ = o_label(gt_base, spacing, min_vol, conn)
    grow = ndimage.binary_dilation(np.asarray(gt_prog, bool), o_structure(bl.ndim, conn))
    touched = set(np.unique(bl[grow]).tolist()) - {0}
    pers = [k for k in range(1, nb + 1) if k not in touched]
    pp = np.asarray(pred_prog, bool)
    return len(pers), sum(1 for k in pers if pp[bl == k].mean() >= min_cov)


def o_case_rows(pb, gb, pps, gps, spacing, protocol="segmast") -> list[dict]:
    """One row per target: SegMaST (raw voxel metrics, strict NP) or TDW (3 mm^3 filter before all)."""
    mv = {"segmast": 11.0, "tdw": 3.0}[protocol]
    filt = protocol == "tdw"
    rows = []
    before = np.asarray(gb, bool)  # the reference lesions at t - 1 (a lesion new at t1 is old at t2)
    for t, (p, g) in enumerate([(pb, gb), *zip(pps, gps)]):
        pf = o_label(p, spacing, mv)[0] > 0 if filt else np.asarray(p, bool)
        gf = o_label(g, spacing, mv)[0] > 0 if filt else np.asarray(g, bool)
        kind = "B" if t == 0 else ("P" if gf.any() else "NP")
        if kind == "NP" and not filt:
            d = 0.0 if np.asarray(p, bool).any() else 1.0
        else:
            d = o_dice(pf, gf)
        det = o_detect(p, g, spacing, mv)
        r = dict(timepoint=t, kind=kind, dice=d, lesion_f1=det["f1"], lesion_ppv=det["precision"],
                 lesion_recall=det["recall"], n_gt_lesions=det["n_gt"], n_pred_lesions=det["n_pred"],
                 lesion_tp_gt=det["tp_gt"], lesion_tp_pred=det["tp_pred"])
        if t > 0:
            r["daa_correct"] = bool(pf.any()) == (kind == "P")
            r["persisting_lesions"], r["persisting_flagged"] = o_persisting(p, before, g, spacing, mv)
            before = before | np.asarray(g, bool)
        rows.append(r)
    return rows


def o_patient_summary(rows: list[dict], metric: str, kind: str) -> tuple[float, float, int]:
    """Mean over each patient's rows of ``kind``, then mean and SD (ddof=0) over patients."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["kind"] == kind:
            by.setdefault(r["patient_id"], []).append(r[metric])
    means = [float(np.mean(v)) for v in by.values()]
    if not means:
        return float("nan"), float("nan"), 0
    return float(np.mean(means)), float(np.std(means)), len(means)


def o_bin(v: float, thresholds, rtol: float = 1e-6) -> int:
    for k, t in enumerate(thresholds):
        if v <= t * (1 + rtol):
            return k
    return len(thresholds)


def o_stratified(cases: list[dict], thresholds) -> list[dict]:
    nb = len(thresholds) + 1
    acc = {k: np.zeros(nb) for k in ("n_gt", "n_pred", "tp_gt", "tp_pred", "inter", "g", "p")}
    for c in cases:
        gbin = np.array([o_bin(v, thresholds) for v in c["gv"]], int)
        pbin = np.array([gbin[int(np.argmax(c["inter"][:, j]))] if c["n_gt"] and c["inter"][:, j].max() > 0
                         else o_bin(c["pv"][j], thresholds) for j in range(c["n_pred"])], int)
        for b in range(nb):
            acc["n_gt"][b] += (gbin == b).sum()
            acc["n_pred"][b] += (pbin == b).sum()
            acc["tp_gt"][b] += c["gdet"][gbin == b].sum()
            acc["tp_pred"][b] += c["pmat"][pbin == b].sum()
            gmask = np.isin(c["gl"], 1 + np.flatnonzero(gbin == b))
            pmask = np.isin(c["pl"], 1 + np.flatnonzero(pbin == b))
            acc["inter"][b] += (gmask & pmask).sum() * c["vv"]
            acc["g"][b] += gmask.sum() * c["vv"]
            acc["p"][b] += pmask.sum() * c["vv"]
    out = []
    for b in range(nb):
        n = {k: int(acc[k][b]) for k in ("n_gt", "n_pred", "tp_gt", "tp_pred")}
        empty = n["n_gt"] == 0 and n["n_pred"] == 0
        f1, prec, rec = o_scores(n["tp_gt"], n["n_gt"], n["tp_pred"], n["n_pred"])
        denom = acc["g"][b] + acc["p"][b]
        out.append(dict(**n, recall=np.nan if empty else rec, precision=np.nan if empty else prec,
                        lesion_f1=np.nan if empty else f1, dice=2 * acc["inter"][b] / denom if denom else np.nan))
    return out


def o_evolution(base, progs, affine, min_vol=3.0, conn=26) -> list[dict]:
    """L_0 = B, L_k = L_{k-1} | P_k; a lesion of L_k with >= min_vol of new tissue P_k & ~L_{k-1} changed."""
    sp = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    vv = float(np.prod(sp))
    cur = np.asarray(base, bool)
    prev_lab, _, prev_v = o_label(cur, sp, min_vol, conn)
    out = []
    for prog in progs:
        prog = np.asarray(prog, bool)
        new_tissue = prog & ~cur
        nxt = cur | prog
        lab, n, vols = o_label(nxt, sp, min_vol, conn)
        changes = []
        for c in range(1, n + 1):
            comp = lab == c
            nv = int((comp & new_tissue).sum())
            if nv == 0 or nv * vv < min_vol * (1 - 1e-12):
                continue
            earlier = sorted(set(np.unique(prev_lab[comp]).tolist()) - {0})
            centre = (np.asarray(affine, float) @ np.r_[np.argwhere(comp & new_tissue).mean(0), 1.0])[:3]
            changes.append(dict(kind="enlarging" if earlier else "new", earlier=tuple(earlier), added=nv * vv,
                                lesion=int(comp.sum()) * vv, centre=centre,
                                pieces=ndimage.label(comp & new_tissue, o_structure(3, conn))[1]))
        out.append(dict(changes=changes, count=n, volume=float(vols.sum()), previous=float(prev_v.sum())))
        cur, prev_lab, prev_v = nxt, lab, vols
    return out


# ----------------------------------------------------------------------------------------------------------
# Random masks
# ----------------------------------------------------------------------------------------------------------


def blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int, maxr: int = 2, keep: float = 0.8) -> np.ndarray:
    """``n`` random boxes of half-width <= maxr (touching the border too), thinned to ``keep`` of voxels."""
    x = np.zeros(shape, bool)
    for _ in range(n):
        c = [int(rng.integers(0, s)) for s in shape]
        r = rng.integers(0, maxr + 1, size=len(shape))
        x[tuple(slice(max(0, ci - ri), ci + ri + 1) for ci, ri in zip(c, r))] = True
    return x & (rng.random(shape) < keep)


def perturb(rng: np.random.Generator, g: np.ndarray) -> np.ndarray:
    """A prediction near ``g``: flipped boundary voxels plus a few false-positive blobs."""
    p = g ^ ((rng.random(g.shape) < 0.03) & ndimage.binary_dilation(g))
    return p | blobs(rng, g.shape, int(rng.integers(0, 4)), 1)


def random_pair(rng: np.random.Generator, nd: int = 3) -> tuple[np.ndarray, np.ndarray]:
    shape = tuple(int(s) for s in rng.integers(3, 16, size=nd))
    g = blobs(rng, shape, int(rng.integers(0, 6)))
    p = perturb(rng, g) if rng.random() < 0.7 else blobs(rng, shape, int(rng.integers(0, 6)))
    return p, g


def rotated_affine(rng: np.random.Generator, zooms) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a = np.eye(4)
    a[:3, :3] = q * np.asarray(zooms, float)[None, :]
    a[:3, 3] = rng.normal(size=3) * 10
    return a


# ----------------------------------------------------------------------------------------------------------
# Voxel and lesion metrics
# ----------------------------------------------------------------------------------------------------------


def check_detection_sweep(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    for it in range(n):
        nd = 2 if it % 5 == 0 else 3
        p, g = random_pair(rng, nd)
        assert dice(p, g) == pytest.approx(o_dice(p, g), abs=1e-12)
        sp = tuple(float(s) for s in rng.choice([0.5, 1.0, 1.3, 3.0], size=nd))
        conns = (4, 8) if nd == 2 else (6, 18, 26)
        for rule in ("iou", "iou_global", "overlap"):
            conn = conns[it % len(conns)]
            mv, thr = float(rng.choice([0, 1, 3, 11])), float(rng.choice([0.0, 0.1, 0.3]))
            det = lesion_detection(p, g, sp, min_volume_mm3=mv, connectivity=conn, rule=rule, iou_threshold=thr)
            o = o_detect(p, g, sp, mv, rule, thr, conn)
            assert (det.n_gt, det.n_pred) == (o["n_gt"], o["n_pred"]), (it, rule)
            np.testing.assert_array_equal(det.match.gt_detected, o["gdet"])
            np.testing.assert_array_equal(det.match.pred_matched, o["pmat"])
            assert (det.f1, det.precision, det.recall) == pytest.approx((o["f1"], o["precision"], o["recall"]))
            np.testing.assert_allclose(det.gt_volumes_mm3, o["gv"], rtol=1e-12)
            np.testing.assert_allclose(det.pred_volumes_mm3, o["pv"], rtol=1e-12)


def test_dice_and_detection_match_the_oracle_on_random_masks() -> None:
    check_detection_sweep(1, 60)


@pytest.mark.slow
def test_dice_and_detection_match_the_oracle_on_many_random_masks() -> None:
    check_detection_sweep(2, 600)


def test_adversarial_masks_against_the_oracle() -> None:
    z = np.zeros((5, 6, 7), bool)
    one = z.copy()
    one[0, 0, 0] = True  # a single voxel in a corner (border)
    diag = z.copy()
    diag[1, 1, 1] = diag[2, 2, 2] = True  # touching at a corner only
    edge = z.copy()
    edge[1, 1, 1] = edge[2, 2, 1] = True  # touching along an edge
    cases = [(z, z), (one, z), (z, one), (one, one), (diag, one), (diag, diag), (edge, diag), (~z, ~z), (~z, one)]
    for p, g in cases:
        assert dice(p, g) == o_dice(p, g)
        for conn in (6, 18, 26):
            for rule in ("iou", "iou_global", "overlap"):
                det = lesion_detection(p, g, (1.0, 0.5, 3.0), connectivity=conn, rule=rule)
                o = o_detect(p, g, (1.0, 0.5, 3.0), 0.0, rule, 0.1, conn)
                assert (det.n_gt, det.n_pred, det.match.tp_gt, det.match.tp_pred) == (
                    o["n_gt"], o["n_pred"], o["tp_gt"], o["tp_pred"])
                assert det.f1 == pytest.approx(o["f1"])
    # the documented empty conventions: both empty 1, one empty 0 (Dice and lesion F1)
    assert (dice(z, z), dice(one, z), dice(z, one)) == (1.0, 0.0, 0.0)
    assert [lesion_detection(a, b).f1 for a, b in ((z, z), (one, z), (z, one))] == [1.0, 0.0, 0.0]
    # connectivity: corner-touching voxels are one lesion only under 26, edge-touching under 18 and 26
    assert [lesion_detection(diag, diag, connectivity=c).n_gt for c in (6, 18, 26)] == [2, 2, 1]
    assert [lesion_detection(edge, edge, connectivity=c).n_gt for c in (6, 18, 26)] == [2, 1, 1]


def test_split_and_merged_lesions_against_the_oracle() -> None:
    g = np.zeros((1, 3, 12), bool)
    g[0, :, 1:9] = True  # one reference lesion of 24 voxels
    p = np.zeros_like(g)
    p[0, :, 0:4] = p[0, :, 5:10] = True  # split into two predictions
    for rule, counts in (("iou", (1, 1, 1, 2)), ("iou_global", (1, 1, 1, 2)), ("overlap", (1, 1, 2, 2))):
        for a, b, (tpg, ng, tpp, npr) in ((p, g, counts), (g, p, (counts[2], counts[3], counts[0], counts[1]))):
            det = lesion_detection(a, b, rule=rule)
            o = o_detect(a, b, (1, 1, 1), 0.0, rule)
            assert (det.match.tp_gt, det.n_gt, det.match.tp_pred, det.n_pred) == (tpg, ng, tpp, npr)
            assert (o["tp_gt"], o["n_gt"], o["tp_pred"], o["n_pred"]) == (tpg, ng, tpp, npr)


def test_iou_global_breaks_ties_by_the_lower_labels() -> None:
    # Reference A (4 voxels) overlaps p and q with IoU 1/4 each; reference B overlaps only q (IoU 1/4).
    # Ties go to the lower reference, then the lower predicted label: (A, p) first, then (B, q): 2 matches.
    g = np.zeros((1, 1, 16), bool)
    p = np.zeros_like(g)
    g[0, 0, 0:4] = True  # A
    g[0, 0, 6:10] = True  # B
    p[0, 0, 0] = True  # p: 1 of A's voxels, IoU 1/4
    p[0, 0, 3] = True  # q (connected to nothing else): IoU(A, q) = 1/4
    p[0, 0, 9] = True  # r: IoU(B, r) = 1/4
    det = lesion_detection(p, g, rule="iou_global")
    o = o_detect(p, g, (1, 1, 1), 0.0, "iou_global")
    assert det.match.tp_gt == o["tp_gt"] == 2
    np.testing.assert_array_equal(det.match.pred_matched, o["pmat"])


# ----------------------------------------------------------------------------------------------------------
# Longitudinal rows, aggregation, DAA
# ----------------------------------------------------------------------------------------------------------


def random_case(rng: np.random.Generator, shape=None, T=None):
    shape = shape or tuple(int(s) for s in rng.integers(6, 16, size=3))
    T = T or int(rng.integers(2, 6))
    gb = blobs(rng, shape, int(rng.integers(0, 5)), 2)
    gps, pps = [], []
    for _ in range(T - 1):
        g = blobs(rng, shape, int(rng.integers(1, 3)), 1) if rng.random() < 0.5 else np.zeros(shape, bool)
        r = rng.random()
        gps.append(g)
        pps.append(perturb(rng, g) if r < 0.5 else np.zeros(shape, bool) if r < 0.75 else blobs(rng, shape, 1, 0))
    return perturb(rng, gb), gb, pps, gps


def check_longitudinal_rows(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    all_rows: list[dict] = []
    for it in range(n):
        pb, gb, pps, gps = random_case(rng)
        sp = tuple(float(s) for s in rng.choice([0.8, 1.0, 2.0, 3.0], size=3))
        for protocol in ("segmast", "tdw"):
            rows, _ = evaluate_longitudinal_case(pb, gb, pps, gps, sp, protocol, case_id=f"c{it}",
                                                 patient_id=f"p{it % 4}")
            for r, o in zip(rows, o_case_rows(pb, gb, pps, gps, sp, protocol), strict=True):
                for k, v in o.items():
                    assert r[k] == pytest.approx(v, abs=1e-12), (it, protocol, r["timepoint"], k)
            if protocol == "segmast":
                all_rows += rows
    return all_rows


def test_longitudinal_rows_match_the_oracle() -> None:
    rows = check_longitudinal_rows(3, 20)
    # aggregation: per patient, then mean (SD, ddof=0) over patients; DAA pooled over follow-ups
    table = ResultsTable(rows)
    for metric in ("dice", "lesion_f1", "lesion_ppv"):
        for kind in ("B", "P", "NP"):
            s = table.summary(metric, kind)
            mean, sd, n = o_patient_summary(rows, metric, kind)
            assert s.n_patients == n
            if n:
                assert (s.mean, s.sd) == pytest.approx((mean, sd), abs=1e-12)
    fus = [r for r in rows if r["kind"] != "B"]
    daa = 100.0 * np.mean([r["daa_correct"] for r in fus])
    assert table.daa() == pytest.approx(daa)
    assert disease_activity_assessment([r["daa_correct"] for r in fus]) == pytest.approx(daa)
    # FU1 / FU2 (SegMaST Figure 4): the same summary on the rows of one follow-up
    for tp in (1, 2):
        sub = [r for r in rows if r["timepoint"] == tp]
        for kind in ("P", "NP"):
            s = table.select(timepoint=tp).summary("dice", kind)
            mean, sd, n = o_patient_summary(sub, "dice", kind)
            assert s.n_patients == n
            if n:
                assert (s.mean, s.sd) == pytest.approx((mean, sd), abs=1e-12)


@pytest.mark.slow
def test_longitudinal_rows_match_the_oracle_many_cases() -> None:
    check_longitudinal_rows(4, 200)


def test_cohorts_without_p_or_without_np_followups() -> None:
    rng = np.random.default_rng(5)
    shape = (8, 9, 10)
    g = np.zeros(shape, bool)
    g[2:5, 2:5, 2:5] = True
    for active in (True, False):
        rows = []
        for c in range(3):
            gb = blobs(rng, shape, 2, 2)
            gps = [g if active else np.zeros(shape, bool)] * 2
            pps = [blobs(rng, shape, 1, 1) if c else np.zeros(shape, bool)] * 2
            rows += evaluate_longitudinal_case(perturb(rng, gb), gb, pps, gps, case_id=f"c{c}")[0]
        table = ResultsTable(rows)
        absent = "NP" if active else "P"
        s = table.summary("dice", absent)
        assert s.n_patients == 0 and np.isnan(s.mean) and np.isnan(s.sd)
        present = "P" if active else "NP"
        mean, sd, n = o_patient_summary(rows, "dice", present)
        assert table.summary("dice", present).n_patients == n == 3
        assert (table.summary("dice", present).mean, table.summary("dice", present).sd) == pytest.approx((mean, sd))


# ----------------------------------------------------------------------------------------------------------
# Size bins
# ----------------------------------------------------------------------------------------------------------


def test_stratified_metrics_match_the_oracle() -> None:
    rng = np.random.default_rng(11)
    for it in range(20):
        sp = tuple(float(s) for s in rng.choice([0.7, 1.0, 2.0], size=3))
        rule = ("iou", "overlap")[it % 2]
        dets, cases = [], []
        for _ in range(int(rng.integers(1, 5))):
            shape = tuple(int(s) for s in rng.integers(8, 16, size=3))
            g = blobs(rng, shape, int(rng.integers(0, 6)), 2)
            p = perturb(rng, g) if rng.random() < 0.8 else blobs(rng, shape, 3, 2)
            mv = float(rng.choice([0, 3]))
            dets.append(lesion_detection(p, g, sp, min_volume_mm3=mv, rule=rule))
            cases.append(o_detect(p, g, sp, mv, rule))
        thresholds = tuple(float(t) for t in sorted(rng.choice(np.arange(1, 60), 2, replace=False)))
        for ours, mine in zip(stratified_lesion_metrics(dets, thresholds), o_stratified(cases, thresholds),
                              strict=True):
            for k, v in mine.items():
                np.testing.assert_allclose(ours[k], v, rtol=1e-12, err_msg=f"{it} {k}")


def test_size_bins_include_their_upper_edge_with_float32_voxel_sizes() -> None:
    # NIfTI stores voxel sizes as float32: 0.8 mm is read as 0.800000011920929, so 325 voxels of
    # 0.8 x 0.8 x 1 mm are 208.0000062 mm^3. They are 208 mm^3 and belong to the bin up to 208 (Table 4).
    s32 = float(np.float32(0.8))
    g = np.ones((1, 25, 13), bool)
    det = lesion_detection(g, g, (1.0, s32, s32))
    assert det.gt_volumes_mm3[0] > 208 * (1 + 1e-9)  # the float32 round-off is larger than 1e-9
    rows = stratified_lesion_metrics([det], SizeBins((84.0, 208.0)))
    assert [r["n_gt"] for r in rows] == [0, 1, 0]
    # one voxel more is larger, whatever the round-off
    g2 = np.ones((1, 2, 163), bool)
    det2 = lesion_detection(g2, g2, (1.0, s32, s32))
    assert [r["n_gt"] for r in stratified_lesion_metrics([det2], SizeBins((84.0, 208.0)))] == [0, 0, 1]


def test_lesions_of_exactly_the_minimum_volume_are_kept_with_float32_voxel_sizes() -> None:
    # 100 voxels of 0.5 x 0.5 x 0.44 mm are 11 mm^3; with the float32 voxel size of a NIfTI file they are
    # 10.99999994 mm^3. The size filter (evaluate) and the new-lesion rule (longiseg lesions) keep them; one voxel
    # fewer is smaller, whatever the round-off.
    sp = tuple(float(np.float32(v)) for v in (0.5, 0.5, 0.44))
    assert np.prod(sp) * 100 < 11.0
    exact, short = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    exact[1:11, 1:11, 2] = True
    short[1:11, 1:11, 2] = True
    short[10, 10, 2] = False
    assert lesion_detection(exact, exact, sp, min_volume_mm3=11.0).n_gt == 1
    assert lesion_detection(short, short, sp, min_volume_mm3=11.0).n_gt == 0
    affine = np.diag([*sp, 1.0])
    empty = np.zeros_like(exact)
    assert lesion_evolution(empty, [exact], affine, min_volume_mm3=11.0).followups[0].new == 1
    assert lesion_evolution(empty, [short], affine, min_volume_mm3=11.0).followups[0].new == 0


# ----------------------------------------------------------------------------------------------------------
# Lesion evolution (longiseg lesions)
# ----------------------------------------------------------------------------------------------------------


def check_evolution(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    for it in range(n):
        shape = tuple(int(s) for s in rng.integers(8, 16, size=3))
        T = int(rng.integers(2, 6))
        zooms = rng.choice([0.7, 1.0, 1.5, 3.0], size=3)
        aff = rotated_affine(rng, zooms) if it % 2 else np.diag([*zooms, 1.0])
        base = blobs(rng, shape, int(rng.integers(0, 5)), 2)
        progs = [blobs(rng, shape, int(rng.integers(0, 4)), 1) for _ in range(T - 1)]
        mv, conn = float(rng.choice([0.0, 3.0, 11.0])), int(rng.choice([6, 18, 26]))
        ev = lesion_evolution(base, progs, aff, min_volume_mm3=mv, connectivity=conn)
        for f, o in zip(ev.followups, o_evolution(base, progs, aff, mv, conn), strict=True):
            assert f.lesion_count == o["count"]
            assert f.lesion_volume_mm3 == pytest.approx(o["volume"], abs=1e-9)
            assert f.previous_volume_mm3 == pytest.approx(o["previous"], abs=1e-9)
            assert f.active == bool(o["changes"])
            assert len(f.changes) == len(o["changes"])
            for c, oc in zip(f.changes, o["changes"]):
                assert (c.kind, tuple(c.earlier_lesions), c.components) == (oc["kind"], oc["earlier"], oc["pieces"])
                assert c.merged == (len(oc["earlier"]) >= 2)
                assert (c.added_volume_mm3, c.lesion_volume_mm3) == pytest.approx((oc["added"], oc["lesion"]))
                np.testing.assert_allclose(c.centre_mm, oc["centre"], atol=0.0051)  # reported to 0.01 mm


def test_lesion_evolution_matches_the_oracle() -> None:
    check_evolution(21, 25)


@pytest.mark.slow
def test_lesion_evolution_matches_the_oracle_many_cases() -> None:
    check_evolution(22, 300)


# ----------------------------------------------------------------------------------------------------------
# Folders: evaluate_folder / write_report against the oracle (volumes from the files' float32 affines)
# ----------------------------------------------------------------------------------------------------------


def build_folder(root: Path, seed: int, n_cases: int) -> dict:
    from longiseg.data import (
        LongitudinalCase,
        manifest_from_cases,
        save_case,
        save_prediction,
        write_manifest,
    )

    rng = np.random.default_rng(seed)
    truth, cases = {}, []
    for c in range(n_cases):
        pb, gb, pps, gps = random_case(rng, T=int(rng.integers(2, 5)))
        zooms = tuple(float(z) for z in rng.choice([0.8, 1.0, 1.5, 3.0], size=3))
        aff = rotated_affine(rng, zooms)
        case = LongitudinalCase(images=np.zeros((len(gps) + 1, 1, *gb.shape), np.float32),
                                baseline_mask=gb.astype(np.uint8), progression_masks=np.stack(gps).astype(np.uint8),
                                affine=aff, spacing=zooms, modalities=("flair",), case_id=f"c{c}",
                                patient_id=f"p{c // 2}")
        save_case(case, root / "gt")
        cases.append(case)
        save_prediction(root / "pred", f"c{c}", aff, {"mask": [m.astype(np.uint8) for m in [pb, *pps]]})
        truth[f"c{c}"] = (pb, gb, pps, gps, f"p{c // 2}")
    write_manifest(root / "gt" / "manifest.json", manifest_from_cases(cases))
    return truth


def test_evaluate_folder_and_report_match_the_oracle(tmp_path: Path) -> None:
    import nibabel as nib

    truth = build_folder(tmp_path, 7, 5)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "gt", progress=False)
    orows = []
    for cid, (pb, gb, pps, gps, pid) in truth.items():
        aff = nib.load(tmp_path / "gt" / cid / "baseline_mask.nii.gz").affine  # float32 as stored
        sp = np.linalg.norm(aff[:3, :3], axis=0)
        orows += [{**r, "case_id": cid, "patient_id": pid} for r in o_case_rows(pb, gb, pps, gps, sp)]
    ours = {(r["case_id"], r["timepoint"]): r for r in result.table.rows}
    assert len(ours) == len(orows)
    for o in orows:
        r = ours[(o["case_id"], o["timepoint"])]
        assert r["patient_id"] == o["patient_id"]
        for k, v in o.items():
            assert r[k] == pytest.approx(v, abs=1e-12) if not isinstance(v, str) else r[k] == v, (o["case_id"], k)
    out = tmp_path / "report"
    write_report(result, out)
    with open(out / "per_case.csv") as f:
        per_case = list(csv.DictReader(f))
    assert [float(r["dice"]) for r in per_case] == pytest.approx([r["dice"] for r in result.table.rows], abs=1e-12)
    summary = json.loads((out / "summary.json").read_text())["models"][0]
    for metric in ("dice", "lesion_f1", "lesion_ppv"):
        for kind in ("B", "P", "NP") if metric == "dice" else ("B", "P"):
            mean, sd, n = o_patient_summary(orows, metric, kind)
            assert summary[f"{metric}/{kind}/n_patients"] == n
            if n:
                assert (summary[f"{metric}/{kind}/mean"], summary[f"{metric}/{kind}/sd"]) == pytest.approx((mean, sd))
    fus = [o for o in orows if o["kind"] != "B"]
    assert summary["daa/all/mean"] == pytest.approx(100.0 * np.mean([o["daa_correct"] for o in fus]))


@pytest.mark.slow
def test_metrics_on_a_full_size_volume_are_fast() -> None:
    rng = np.random.default_rng(0)
    shape = (193, 229, 193)
    g = blobs(rng, shape, 60, 4, 1.0)
    p = np.zeros_like(g)
    p[:, :, 1:] = g[:, :, :-1]
    p |= blobs(rng, shape, 10, 2, 1.0)
    t0 = time.perf_counter()
    det = lesion_detection(p, g, (1, 1, 1), min_volume_mm3=11)
    d = dice(p, g)
    assert time.perf_counter() - t0 < 10.0
    o = o_detect(p, g, (1, 1, 1), 11.0)
    assert (det.match.tp_gt, det.n_gt, det.match.tp_pred, det.n_pred) == (o["tp_gt"], o["n_gt"], o["tp_pred"],
                                                                          o["n_pred"])
    assert d == pytest.approx(o_dice(p, g))
