"""Match the slide ids of a cohort table to the feature files in a folder, and find packaged cohort tables.

Feature folders name files differently from label tables: TCGA files carry the full barcode plus a UUID
(``TCGA-XX-XXXX-01Z-00-DX1.<uuid>.h5``), CAMELYON files may keep the slide extension (``tumor_001.tif.h5``),
CLAM puts them under ``h5_files/`` or ``pt_files/``. Files are looked up in ``feature_dir``, then
``feature_dir/h5_files``, then ``feature_dir/pt_files`` (a ``.h5`` before a ``.pt``; the first one found wins).
A file's *stem* is its name without ``.h5`` / ``.pt``. For each table id the first rule that finds a file wins:

1. **exact**: the stem equals the id.
2. **extension**: stem and id are equal once a slide extension (``.svs``, ``.tif`` ...) is removed from either.
3. **TCGA barcode**: both are TCGA barcodes and the file's barcode (the stem up to the first ``.``) starts with
   the id's barcode at a ``-`` boundary. A full slide barcode must then match one file; a 12-character case
   barcode (``TCGA-XX-XXXX``, tables that list cases only) matches every slide of that case, one bag each,
   which is how RRT-MIL / MHIM-MIL read their case-level label tables.

Table ids without a file are *missing*; files no id claimed are *extra*.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from milkit.data.feature_files import FEATURE_SUFFIXES
from milkit.errors import DataError

__all__ = ["SLIDE_EXTENSIONS", "MatchReport", "match_slides", "bag_table", "case_ids", "resolve_cohort_csv", "COHORT_DIRS"]

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".isyntax")
SUBDIRS = ("", "h5_files", "pt_files")
_TCGA = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
#: where packaged cohort tables are looked up: the package (a wheel; in the repo ``milkit/cohorts`` links to
#: ``data/cohorts``), then the repository's ``data/cohorts`` (a checkout without symlinks)
COHORT_DIRS = (Path(__file__).resolve().parents[1] / "cohorts", Path(__file__).resolve().parents[2] / "data" / "cohorts")


@dataclass
class MatchReport:
    """Which file each table id matched (``files[id]``: one path, or several for a TCGA case id), by which rule."""

    files: dict[str, list[Path]] = field(default_factory=dict)
    rule_counts: dict[str, int] = field(default_factory=lambda: {"exact": 0, "extension": 0, "tcga": 0})
    missing: list[str] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)

    def summary(self, head: int = 3) -> str:
        """One line: matched (by rule) / missing (first ids) / extra files."""
        n_files = sum(len(v) for v in self.files.values())
        rules = ", ".join(f"{k} {v}" for k, v in self.rule_counts.items() if v)
        miss = f" (first: {', '.join(self.missing[:head])})" if self.missing else ""
        return (f"feature files: {len(self.files)} of {len(self.files) + len(self.missing)} table ids matched "
                f"{n_files} files ({rules or 'none'}); {len(self.missing)} missing{miss}; "
                f"{len(self.extra)} extra files not in the table")


def _strip_slide_ext(name: str) -> str:
    lower = name.lower()
    for ext in SLIDE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def _index(feature_dir: Path) -> dict[str, Path]:
    """stem → path of every feature file (``.h5`` anywhere before ``.pt``, then in SUBDIRS order)."""
    out: dict[str, Path] = {}
    for suffix in FEATURE_SUFFIXES:
        for sub in SUBDIRS:
            for p in sorted((feature_dir / sub).glob(f"*{suffix}")):
                out.setdefault(p.name[: -len(suffix)], p)
    return out


def match_slides(slide_ids: Iterable[str], feature_dir: str | Path, strict: bool = False,
                 where: str = "cohort") -> MatchReport:
    """Match every id to its feature file(s) by the module's rules. ``strict``: a missing id is a DataError
    listing the first missing ids; otherwise missing ids are only reported. No match at all is always an error."""
    feature_dir = Path(feature_dir)
    index = _index(feature_dir)
    by_plain = {}
    by_case: dict[str, list[str]] = {}
    for stem in index:
        by_plain.setdefault(_strip_slide_ext(stem), stem)
        if _TCGA.match(stem):
            by_case.setdefault(stem[:12].upper(), []).append(stem)
    report, used = MatchReport(), set()
    for sid in slide_ids:
        stems, rule = _match_one(str(sid), index, by_plain, by_case)
        if not stems:
            report.missing.append(str(sid))
            continue
        report.files[str(sid)] = [index[s] for s in stems]
        report.rule_counts[rule] += 1
        used.update(stems)
    report.extra = [index[s] for s in index if s not in used]
    ids = report.missing
    if strict and ids:
        raise DataError(f"{where}: {len(ids)} slide(s) have no feature file in {feature_dir}: "
                        f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''} (data.source.strict=true)")
    if not report.files:
        raise DataError(f"{where}: none of its {len(ids)} slides has a feature file in {feature_dir} "
                        f"(first: {', '.join(ids[:3])}; looked for <id>.h5 / <id>.pt, also in h5_files/, pt_files/)")
    return report


def _match_one(sid: str, index: dict[str, Path], by_plain: dict[str, str],
               by_case: dict[str, list[str]]) -> tuple[list[str], str]:
    if sid in index:
        return [sid], "exact"
    plain = by_plain.get(_strip_slide_ext(sid))
    if plain is not None:
        return [plain], "extension"
    if not _TCGA.match(sid):
        return [], ""
    barcode = sid.split(".")[0].upper()
    hits = [s for s in by_case.get(barcode[:12], []) if (s.split(".")[0].upper() + "-").startswith(barcode + "-")]
    if len(hits) > 1 and len(barcode) > 12:
        raise DataError(f"slide '{sid}' matches {len(hits)} feature files ({', '.join(hits[:3])}); "
                        "give the full file stem in the cohort table")
    return sorted(hits), "tcga"


def bag_table(table: pd.DataFrame, report: MatchReport, where: str = "cohort") -> pd.DataFrame:
    """The table's rows that have files, one row per file, plus ``bag_id`` (the table's id, or the file stem where
    a case id matched several slides) and ``path``."""
    rows = [(i, sid if len(files) == 1 else p.name[: -len(p.suffix)], p)
            for i, sid in enumerate(table["slide_id"]) for files in [report.files.get(sid, [])] for p in files]
    idx, bags, paths = zip(*rows)
    out = table.iloc[list(idx)].reset_index(drop=True).assign(bag_id=list(bags), path=list(paths))
    dup = out["path"].duplicated()
    if dup.any():
        raise DataError(f"{where}: feature file {out['path'][dup].iloc[0]} is matched by two table rows "
                        f"({', '.join(out.loc[out['path'] == out['path'][dup].iloc[0], 'slide_id'])})")
    return out


def case_ids(slide_ids: Iterable[str]) -> list[str]:
    """Case id when a table has none: the 12-character patient barcode for TCGA ids, else the slide id."""
    return [s[:12] if _TCGA.match(s) else s for s in map(str, slide_ids)]


def resolve_cohort_csv(value: str | Path) -> Path:
    """A cohort table path as given, or the packaged table of that name (``camelyon16`` → ``.../camelyon16.csv``)."""
    path = Path(value)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    for folder in COHORT_DIRS:
        if (folder / f"{path.name}.csv").is_file():
            return folder / f"{path.name}.csv"
    known = sorted({p.stem for folder in COHORT_DIRS if folder.is_dir() for p in folder.glob("*.csv")})
    raise DataError(f"{value}: cohort CSV not found (neither a file nor a packaged cohort: {', '.join(known)})")
