"""The cohort manifest (``manifest.json`` or ``manifest.csv``): channel order and one row per case.

A row gives the case id and optionally its patient id (for patient-level splits), number of timepoints,
progression flag and whether its baseline is annotated; :func:`read_manifest` refuses what it does not
understand (unknown fields, duplicate ids, bad flags) rather than ignore it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longiseg.data import layout
from longiseg.data.case import LongitudinalCase
from longiseg.data.sources import CaseSource
from longiseg.utils.io import PathLike, atomic_write, atomic_write_json
from longiseg.utils.validation import check_bool, check_instance, check_path, check_sequence, check_timepoints

__all__ = ["MANIFEST_FIELDS", "ManifestEntry", "Manifest", "read_manifest", "write_manifest", "manifest_from_cases"]


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest row: ``case_id``, ``patient_id``, ``num_timepoints``, the ``progression`` flag and
    ``baseline_annotated``.

    ``num_timepoints`` and ``progression`` are ``None`` where the manifest leaves them out; the number of
    timepoints is then counted from the case's files. ``baseline_annotated`` is ``False`` for cases without a
    baseline annotation (MSSEG-2), so the flag survives conversion to the library layout; absent: ``True``.
    """

    case_id: str
    patient_id: str
    num_timepoints: int | None
    progression: bool | None
    baseline_annotated: bool = True

    def __post_init__(self) -> None:
        layout.check_case_id(self.case_id)
        if not isinstance(self.patient_id, str):
            raise TypeError(f"patient_id must be a str ('' for the case id), got {type(self.patient_id).__name__}")
        if self.num_timepoints is not None:
            check_timepoints("num_timepoints", self.num_timepoints)
        if self.progression is not None:
            check_bool("progression", self.progression)
        check_bool("baseline_annotated", self.baseline_annotated)


@dataclass(frozen=True)
class Manifest:
    """A cohort manifest: the modalities (channel order) and one :class:`ManifestEntry` per case.

    The modality names are checked where images are read by them (:func:`~longiseg.data.case.check_modalities`):
    a folder of masks never uses them.

    Raises:
        TypeError: ``modalities`` is a single string or holds something other than a non-empty string; ``cases``
            is not a sequence of :class:`ManifestEntry`.
        ValueError: a case id given twice.
    """

    modalities: tuple[str, ...]
    cases: tuple[ManifestEntry, ...]

    def __post_init__(self) -> None:
        mods = self.modalities
        if isinstance(mods, (str, bytes)) or not isinstance(mods, Sequence) or not all(
                isinstance(m, str) and m for m in mods):
            raise TypeError(f"modalities must be a sequence of channel names such as ('flair', 't2'), got {mods!r}")
        object.__setattr__(self, "modalities", tuple(mods))
        object.__setattr__(self, "cases", tuple(check_sequence("cases", self.cases, ManifestEntry, "a ManifestEntry")))
        ids = [e.case_id for e in self.cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate case_id(s) {dup}: each case is listed once")

    @property
    def progression_flags(self) -> list[bool | None]:
        """Per-case progression flags in manifest order."""
        return [c.progression for c in self.cases]


def _parse_flag(value: object, where: str, name: str = "progression") -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{where}: {name} must be true/false/1/0 or empty, got {value!r}")


#: The fields of a manifest's case row (a CSV manifest may add the ``modalities`` column).
MANIFEST_FIELDS = ("case_id", "patient_id", "num_timepoints", "progression", "baseline_annotated")


def _entry(row: dict, where: str, extra: tuple[str, ...] = ()) -> ManifestEntry:
    if not isinstance(row, dict) or not row.get("case_id"):
        raise ValueError(f"{where}: every case needs a non-empty 'case_id'")
    unknown = sorted(str(k) for k in row if k not in MANIFEST_FIELDS + extra)
    if unknown:  # a misspelt patient_id would otherwise make every case its own patient
        raise ValueError(f"{where}: unknown field(s) {unknown}; a case has {list(MANIFEST_FIELDS + extra)}")
    patient = row.get("patient_id")
    if isinstance(patient, bool) or not isinstance(patient, (str, int, type(None))):
        raise ValueError(f"{where}: patient_id must be a string or an integer, got {patient!r}")
    if not isinstance(row["case_id"], (str, int)) or isinstance(row["case_id"], bool):
        raise ValueError(f"{where}: case_id must be a string, got {row['case_id']!r}")
    case_id = layout.check_case_id(str(row["case_id"]), where=where)
    raw_t = row.get("num_timepoints")
    t = None
    if raw_t is not None and raw_t != "":
        try:
            if isinstance(raw_t, bool) or (isinstance(raw_t, float) and not raw_t.is_integer()):
                raise TypeError
            t = int(raw_t)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: num_timepoints must be an integer, got {raw_t!r}") from exc
        if t < 2:
            raise ValueError(f"{where}: num_timepoints must be >= 2 (a baseline and a follow-up), got {t}")
    return ManifestEntry(
        case_id=case_id,
        patient_id=case_id if patient is None or str(patient).strip() == "" else str(patient).strip(),
        num_timepoints=t,
        progression=_parse_flag(row.get("progression"), where),
        baseline_annotated=_parse_flag(row.get("baseline_annotated"), where, "baseline_annotated") is not False,
    )


def read_manifest(path: PathLike) -> Manifest:
    """Read ``manifest.json`` or ``manifest.csv``.

    JSON: ``{"modalities": [...], "cases": [{"case_id", "patient_id", "num_timepoints", "progression"}]}``.
    CSV: columns ``case_id, patient_id, num_timepoints, progression`` and optionally ``modalities``
    (``;``-separated, the same list on every row). Only ``case_id`` is required: ``patient_id`` defaults to the case
    id, an absent ``num_timepoints`` is counted from the files, an absent ``progression`` from the masks.
    An optional ``baseline_annotated`` (``false`` for cases without baseline labels) defaults to true.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: malformed content (unknown suffix, not UTF-8, missing ``case_id``, unknown fields, duplicate
            ids, bad flags or patient ids).
    """
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"manifest must end in .json or .csv, got {path.name}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is not content
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") \
            from None
    extra: tuple[str, ...] = ()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValueError(f"manifest {path} must be an object with a 'cases' list")
        raw_mods = data.get("modalities")
        if raw_mods is not None and (not isinstance(raw_mods, list) or not all(isinstance(m, str) for m in raw_mods)):
            raise ValueError(f"manifest {path}: modalities must be a list of names, got {raw_mods!r}")
        mods = tuple(m.lower() for m in raw_mods or [])
        rows = data["cases"]
        places = [f"case {i + 1}" for i in range(len(rows))]  # counted from 1, as a reader counts them
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # "case_id, patient_id" (a space after the comma) names the column "patient_id", not " patient_id"
        rows, places = [], []
        header = [(f or "").strip() for f in reader.fieldnames or []]
        if header and "case_id" not in header:  # "Case_ID", or a file separated by ";": every row "lacked" case_id
            raise ValueError(f"manifest {path}: its header names the columns {header} but no 'case_id'; the columns "
                             f"are {list(MANIFEST_FIELDS) + ['modalities']} (lower-case), separated by commas")
        for r in reader:
            if None in r:  # DictReader keeps the values beyond the header under the key None
                raise ValueError(f"manifest {path} line {reader.line_num}: {len(header) + len(r[None])} values but the "
                                 f"header names {len(header)} columns {header}")
            rows.append({(k or "").strip(): v.strip() if isinstance(v, str) else v for k, v in r.items()})
            places.append(f"line {reader.line_num}")  # the file's line (its last, for a quoted multi-line field)
        extra = ("modalities",)
        # compared as the lists they name: "flair;t2" and "flair; T2" are one channel order
        row_mods = [tuple(m.strip().lower() for m in (r.get("modalities") or "").split(";") if m.strip())
                    for r in rows]
        mods = row_mods[0] if row_mods else ()
        for row, place in zip(row_mods, places):
            if row != mods:
                raise ValueError(f"manifest {path}: the 'modalities' column must name the same modalities on every "
                                 f"row, but {places[0]} names {list(mods)} and {place} {list(row)}")
    entries = tuple(_entry(r, f"manifest {path} {place}", extra) for r, place in zip(rows, places))
    try:
        return Manifest(modalities=mods, cases=entries)
    except (TypeError, ValueError) as err:  # duplicate case ids
        raise ValueError(f"manifest {path}: {err}") from None


def manifest_from_cases(cases: Sequence[CaseSource | LongitudinalCase]) -> Manifest:
    """Build a manifest from sources or loaded cases (progression flags computed where unknown)."""
    check_sequence("cases", cases, (LongitudinalCase, CaseSource), "a CaseSource or LongitudinalCase")
    if not cases:
        raise ValueError("cases must not be empty")
    mods = tuple(cases[0].modalities)
    entries = []
    for c in cases:
        if tuple(c.modalities) != mods:
            raise ValueError(f"case {c.case_id!r} has modalities {list(c.modalities)}, expected {list(mods)}")
        if isinstance(c, LongitudinalCase):
            flag = c.has_progression if c.has_labels else None
        else:
            flag = c.progression_flag() if c.has_labels else None
        entries.append(ManifestEntry(c.case_id, c.patient_id, c.num_timepoints, flag, c.baseline_annotated))
    return Manifest(modalities=mods, cases=tuple(entries))


def write_manifest(path: PathLike, manifest: Manifest, *, overwrite: bool = True) -> Path:
    """Write ``manifest`` atomically as JSON or CSV (chosen by the suffix of ``path``).

    Raises:
        TypeError: ``path`` is not a path or ``manifest`` not a :class:`Manifest`.
        ValueError: ``path`` ends in neither ``.json`` nor ``.csv``.
        FileExistsError: ``path`` exists and ``overwrite`` is ``False``.
    """
    path = check_path("path", path)
    check_instance("manifest", manifest, Manifest, "a Manifest")
    if path.suffix == ".json":
        obj = {
            "modalities": list(manifest.modalities),
            "cases": [
                {"case_id": e.case_id, "patient_id": e.patient_id, "num_timepoints": e.num_timepoints,
                 "progression": e.progression, **({} if e.baseline_annotated else {"baseline_annotated": False})}
                for e in manifest.cases
            ],
        }
        return atomic_write_json(path, obj, overwrite=overwrite)
    if path.suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        annotated_column = not all(e.baseline_annotated for e in manifest.cases)  # only where it says something
        w.writerow(["case_id", "patient_id", "num_timepoints", "progression", "modalities"]
                   + ["baseline_annotated"] * annotated_column)
        for e in manifest.cases:
            flag = "" if e.progression is None else int(e.progression)
            num_t = "" if e.num_timepoints is None else e.num_timepoints
            w.writerow([e.case_id, e.patient_id, num_t, flag, ";".join(manifest.modalities)]
                       + [int(e.baseline_annotated)] * annotated_column)
        text = buf.getvalue()
        return atomic_write(path, lambda fh: fh.write(text), overwrite=overwrite)
    raise ValueError(f"manifest path must end in .json or .csv, got {path.name}")
