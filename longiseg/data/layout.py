"""The library's on-disk folder layout for longitudinal cases and predictions.

One folder per case (one patient's registered series of ``T`` timepoints)::

    ROOT/
      manifest.json              # optional; see below (manifest.csv is accepted too)
      CASE_ID/
        t0_flair.nii.gz          # image of timepoint 0 (baseline), one file per modality
        t0_t2.nii.gz
        t1_flair.nii.gz          # timepoint 1 (first follow-up) ...
        t1_t2.nii.gz
        baseline_mask.nii.gz     # binary lesion mask at baseline (timepoint 0)
        progression_t1.nii.gz    # binary new/enlarging-lesion mask of follow-up 1 (empty if stable)
        brain_mask.nii.gz        # optional binary brain mask

All volumes of a case share shape and affine (registered and resampled beforehand). ``manifest.json``
holds ``{"modalities": [...], "cases": [{"case_id", "patient_id", "num_timepoints", "progression"}]}``.

A prediction folder written by ``longiseg predict`` mirrors it::

    OUT/CASE_ID/baseline_mask.nii.gz, progression_t1.nii.gz        # post-processed binary masks
    OUT/CASE_ID/baseline_prob.nii.gz, progression_t1_prob.nii.gz   # averaged probabilities
    OUT/CASE_ID/baseline_entropy.nii.gz, progression_t1_entropy.nii.gz

so ``longiseg evaluate OUT ROOT`` pairs files by case folder and file name.

A case id names a folder, so it must be one plain path component (:func:`check_case_id`). Every file may
be stored as ``.nii.gz`` or ``.nii``; a folder holding both forms of one name is ambiguous and refused
(:func:`find_nifti`, :func:`scan_images`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PureWindowsPath

from longiseg.utils.validation import check_instance, check_path, check_positive_int, check_timepoints

__all__ = [
    "MANIFEST_JSON",
    "MANIFEST_CSV",
    "BASELINE_MASK",
    "BRAIN_MASK",
    "PREDICTION_RECORD",
    "read_prediction_record",
    "image_filename",
    "progression_filename",
    "prediction_filenames",
    "parse_image_filename",
    "image_timepoint",
    "parse_progression_filename",
    "check_progression_masks_have_images",
    "check_name_cases",
    "MAX_CASE_ID_BYTES",
    "check_case_id",
    "nifti_stem",
    "find_nifti",
    "scan_images",
]

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
BASELINE_MASK = "baseline_mask.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"
#: File in a predicted case folder that records what produced the prediction and the case's patient
#: (:func:`~longiseg.data.predictions.save_prediction` writes it); no reader of masks or maps reads it.
PREDICTION_RECORD = "prediction.json"

_IMAGE_RE = re.compile(r"^t(\d+)_([A-Za-z0-9\-]+)\.nii(\.gz)?$")
_IMAGE_LIKE_RE = re.compile(r"^t(\d+)_(.+)\.nii(\.gz)?$")  # named like an image, whatever its modality
_PROGRESSION_RE = re.compile(r"^progression_t(\d+)\.nii(\.gz)?$")
# the layout's names in another case (T0_flair.nii.gz, t1_flair.NII.GZ, BRAIN_MASK.nii.gz): refused, not left out
_LAYOUT_NAME_ANY_CASE_RE = re.compile(
    r"^(?:t\d+_[a-z0-9\-]+|baseline_mask|brain_mask|progression_t\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


def image_filename(timepoint: int, modality: str) -> str:
    """File name of one timepoint's modality, e.g. ``image_filename(1, "flair") == "t1_flair.nii.gz"``."""
    timepoint = check_positive_int("timepoint", timepoint, minimum=0)
    check_instance("modality", modality, str, "a modality name (str)")
    if not re.fullmatch(r"[A-Za-z0-9\-]+", modality):
        raise ValueError(f"modality must be alphanumeric (dashes allowed), got {modality!r}")
    return f"t{timepoint}_{modality.lower()}.nii.gz"


def progression_filename(followup: int, suffix: str = "") -> str:
    """File name of the progression mask of follow-up ``followup`` (1-based), e.g. ``progression_t1.nii.gz``.

    ``suffix`` (``"_prob"``, ``"_entropy"``) names the probability or entropy map of a prediction.
    """
    if check_positive_int("followup", followup, minimum=0) < 1:
        raise ValueError(f"followup must be >= 1 (timepoint 0 is the baseline), got {followup}")
    check_instance("suffix", suffix, str, "a str such as '_prob'")
    return f"progression_t{int(followup)}{suffix}.nii.gz"


def prediction_filenames(num_timepoints: int) -> dict[str, list[str]]:
    """All files that a prediction of a ``T``-timepoint case writes, grouped by kind."""
    fus = range(1, check_timepoints("num_timepoints", num_timepoints))
    return {
        "mask": [BASELINE_MASK] + [progression_filename(i) for i in fus],
        "prob": ["baseline_prob.nii.gz"] + [progression_filename(i, "_prob") for i in fus],
        "entropy": ["baseline_entropy.nii.gz"] + [progression_filename(i, "_entropy") for i in fus],
    }


def parse_image_filename(name: str | Path) -> tuple[int, str] | None:
    """``"t1_flair.nii.gz" -> (1, "flair")``; ``None`` for files that are not images."""
    m = _IMAGE_RE.match(check_path("name", name).name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2).lower()


def image_timepoint(name: str | Path) -> int | None:
    """The timepoint a file named like an image claims (``"t0_t1_ce.nii.gz" -> 0``), whether or not its
    modality is a valid name (:func:`scan_images` refuses it then); ``None`` for other files."""
    m = _IMAGE_LIKE_RE.match(check_path("name", name).name)
    return None if m is None else int(m.group(1))


def parse_progression_filename(name: str | Path) -> int | None:
    """``"progression_t2.nii.gz" -> 2`` (the follow-up); ``None`` for other files (``*_prob``, ...)."""
    m = _PROGRESSION_RE.match(check_path("name", name).name)
    return None if m is None else int(m.group(1))


def check_progression_masks_have_images(folder: str | Path, num_timepoints: int, case_label: str) -> None:
    """Refuse a ``progression_t{k}`` mask in ``folder`` for which the case of ``num_timepoints`` timepoints has
    no follow-up ``k`` (extra images are refused as well, never ignored).

    Raises:
        ValueError: naming the mask, ``case_label`` (e.g. ``"case 'p1'"``) and the case's last follow-up.
    """
    folder = check_path("folder", folder)
    stray = sorted((i, f.name) for f in folder.iterdir()
                   if (i := parse_progression_filename(f.name)) is not None and not 1 <= i < num_timepoints)
    if stray and stray[0][0] == 0:
        raise ValueError(f"{case_label}: {folder} holds {stray[0][1]}, but timepoint 0 is the baseline, whose mask is "
                         f"{BASELINE_MASK}: rename the file or remove it")
    if stray:
        raise ValueError(f"{case_label}: {folder} holds {stray[0][1]} but the case has "
                         f"{num_timepoints} timepoints (its last follow-up is t{num_timepoints - 1}); add that "
                         "follow-up's images or remove the extra mask")


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

#: Longest case id, in bytes of its UTF-8 file name: file systems allow 255-byte names, and a case's temporary
#: folder (``.ID.PID-HOST.RANDOM.tmp``) and the lesion report's figures (``ID_fuK_lesionN_KIND.png`` and their
#: temporaries) add up to about 70 bytes to the id.
MAX_CASE_ID_BYTES = 150


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (a file name of undecodable bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_case_id(case_id: str, *, where: str = "") -> str:
    """Return ``case_id`` if it is safe as one folder name, else raise.

    A case id must be a single, non-empty path component: not ``.`` or ``..``, not an absolute path, no
    separator (``/`` or ``\\``), no drive (``C:``), no control character (NUL, newline, ...) and no
    leading or trailing whitespace, and it is UTF-8 text (a folder name in another encoding is refused before any
    work: tables and reports could not store it). So ``ROOT / case_id`` always stays inside ``ROOT``. It is at most
    :data:`MAX_CASE_ID_BYTES` bytes long (UTF-8), so that every file named after it fits a file system's name.

    Args:
        case_id: the id, e.g. from a manifest row or a folder name.
        where: context for the message (e.g. ``"manifest m.json case 3"``).

    Raises:
        TypeError: ``case_id`` is not a string.
        ValueError: naming the id and the rule it breaks.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(case_id, str):
        raise TypeError(f"{prefix}case id must be a string, got {type(case_id).__name__} {case_id!r}")
    rule = None
    if not case_id:
        rule = "must not be empty"
    elif case_id in (".", ".."):
        rule = "must not be '.' or '..'"
    elif case_id.startswith(("/", "\\")):
        rule = "must not be an absolute path"
    elif "/" in case_id or "\\" in case_id:
        rule = "must not contain a path separator ('/' or '\\')"
    elif _CONTROL_RE.search(case_id):
        rule = "must not contain control characters (NUL, newline, ...)"
    elif case_id != case_id.strip():
        rule = "must not start or end with whitespace"
    elif PureWindowsPath(case_id).drive:
        rule = "must not start with a drive such as 'C:'"
    elif not _is_utf8(case_id):
        rule = ("is not UTF-8 text (a folder name in another encoding, such as Latin-1, whose bytes Python keeps as "
                "surrogates): rename the folder; records, tables and reports store case ids as UTF-8")
    elif len(os.fsencode(case_id)) > MAX_CASE_ID_BYTES:
        rule = (f"is {len(os.fsencode(case_id))} bytes long, more than {MAX_CASE_ID_BYTES} (file names are limited "
                "to 255 bytes and the temporaries and figures named after a case add about 70)")
    if rule is not None:
        raise ValueError(f"{prefix}case id {case_id!r} {rule}; a case id is a single folder name")
    return case_id


def nifti_stem(name: str) -> str:
    """``"t0_flair.nii.gz" -> "t0_flair"``, ``"brain_mask.nii" -> "brain_mask"``; other names unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a file name (str), got {type(name).__name__}")
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def find_nifti(folder: str | Path, name: str) -> Path | None:
    """The file ``name`` of ``folder`` stored as ``.nii.gz`` or ``.nii``; ``None`` if neither exists.

    Args:
        folder: the case folder.
        name: the file's layout name with either extension, e.g. :data:`BASELINE_MASK`.

    Raises:
        ValueError: both ``STEM.nii.gz`` and ``STEM.nii`` exist ("ambiguous files ...: keep only one of them").
    """
    stem = nifti_stem(name)
    folder = check_path("folder", folder)
    found = [p for p in (folder / f"{stem}.nii", folder / f"{stem}.nii.gz") if p.exists()]
    if len(found) > 1:
        raise ValueError(f"ambiguous files {found[0]} and {found[1]}: keep only one of them")
    return found[0] if found else None


def _check_name_case(path: Path) -> None:
    """Refuse a file named like a layout file but for the case of its ``t``/mask prefix or its extension (a
    modality may be written in any case: ``t0_FLAIR.nii.gz`` is the FLAIR image)."""
    name = path.name
    if not _LAYOUT_NAME_ANY_CASE_RE.match(name) or _IMAGE_RE.match(name) or name == name.lower():
        return
    stem, dot, ext = name.partition(".")
    image = re.match(r"t\d+_", stem, re.IGNORECASE) is not None
    expected = (stem[:1].lower() + stem[1:] if image else stem.lower()) + dot + ext.lower()
    raise ValueError(f"file {path} is named like the layout's {expected!r} but for upper-case letters, and the "
                     f"layout's names are lower-case (a modality may be in any case): rename it to {expected!r}, or "
                     "move it out of the case folder")


def check_name_cases(folder: str | Path) -> None:
    """Refuse a file of ``folder`` named like a layout file but for upper-case letters in its ``t``/mask prefix
    or its extension (``BASELINE_MASK.nii.gz``, ``t1_flair.NII.GZ``), which the layout would leave out.

    Raises:
        ValueError: naming the file and the layout's name.
    """
    for p in sorted(check_path("folder", folder).iterdir()):
        _check_name_case(p)


def read_prediction_record(folder: str | Path) -> dict | None:
    """The :data:`PREDICTION_RECORD` of the case folder ``folder`` as a dict; ``None`` without a readable one
    (references, predictions of an import or of longiseg before records, a damaged file)."""
    try:
        record = json.loads((Path(folder) / PREDICTION_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def scan_images(folder: str | Path) -> dict[int, dict[str, Path]]:
    """The image files of a case folder: ``{timepoint: {modality: path}}`` (file names only, nothing read).

    Raises:
        ValueError: two files name the same timepoint and modality (``t1_t2.nii`` and ``t1_t2.nii.gz``,
            or names differing only in the modality's case), naming both; a file named like an image whose
            modality is not a modality name (``t0_t1_ce.nii.gz``: an underscore), naming it (it was silently left
            out); a file named like a layout file but for the case of its prefix or extension
            (``T0_flair.nii.gz``, ``t1_flair.NII.GZ``, ``BRAIN_MASK.nii.gz``: they were silently left out).
    """
    found: dict[int, dict[str, Path]] = {}
    for p in sorted(check_path("folder", folder).iterdir()):
        _check_name_case(p)
        parsed = parse_image_filename(p.name)
        if parsed is None:
            like = _IMAGE_LIKE_RE.match(p.name)
            if like is not None:
                raise ValueError(f"image file {p}: {like.group(2)!r} is not a modality name (letters, digits and "
                                 f"dashes, e.g. {like.group(2).replace('_', '-')!r}); rename the file, or move it "
                                 "out of the case folder")
            continue
        t, modality = parsed
        other = found.setdefault(t, {}).get(modality)
        if other is not None:
            raise ValueError(
                f"ambiguous files {other} and {p}: both are timepoint {t} {modality!r}; keep only one of them"
            )
        found[t][modality] = p
    return found
