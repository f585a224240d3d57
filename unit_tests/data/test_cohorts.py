"""The packaged benchmark cohort tables (data/cohorts) and their data configs (data=<cohort>)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from milkit.cli import CONF_DIR
from milkit.data.matching import COHORT_DIRS, resolve_cohort_csv

COHORTS = Path(__file__).resolve().parents[2] / "data" / "cohorts"
#: name → (slides, cases, slides per class) — the counts documented in data/README.md
CLASSIFICATION = {
    "camelyon16": (399, 399, {"normal": 239, "tumor": 160}),
    "tcga_nsclc": (1053, 956, {"LUAD": 541, "LUSC": 512}),
    "tcga_brca": (977, 977, {"IDC": 779, "ILC": 198}),
}
#: name → (slides, patients, patients with an event)
SURVIVAL = {
    "tcga_blca_os": (437, 373, 169), "tcga_brca_os": (1023, 1023, 146), "tcga_coadread_os": (572, 572, 117),
    "tcga_kirc_os": (498, 498, 169), "tcga_kirp_os": (261, 261, 41), "tcga_luad_os": (455, 455, 159),
    "tcga_lusc_os": (484, 452, 190), "tcga_stad_os": (363, 363, 145), "tcga_ucec_os": (539, 480, 75),
    "tcga_blca_os_r2t": (446, 376, 171), "tcga_luad_os_r2t": (518, 455, 159),
}


def read(name: str) -> pd.DataFrame:
    return pd.read_csv(COHORTS / f"{name}.csv", dtype={"slide_id": str, "case_id": str})


def test_exactly_the_documented_tables_are_shipped() -> None:
    """No upstream split files: milkit makes its own (patient-level) splits."""
    assert sorted(p.stem for p in COHORTS.iterdir()) == sorted([*CLASSIFICATION, *SURVIVAL])
    assert COHORT_DIRS[0].resolve() == COHORTS.resolve()  # milkit/cohorts links here (and ships in the wheel)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_tables(name: str) -> None:
    df = read(name)
    slides, cases, per_class = CLASSIFICATION[name]
    assert list(df.columns[:3]) == ["slide_id", "case_id", "label"] and df.notna().all().all()
    assert (len(df), df["case_id"].nunique(), df["label"].value_counts().to_dict()) == (slides, cases, per_class)
    assert df["slide_id"].is_unique and (df.groupby("case_id")["label"].nunique() == 1).all()


def test_camelyon16_official_split() -> None:
    df = read("camelyon16")
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", "normal"): 159, ("train", "tumor"): 111, ("test", "normal"): 80, ("test", "tumor"): 49}
    train = df[df["split"] == "train"]
    assert (train["label"] == train["slide_id"].str.split("_").str[0]).all()
    assert "test_049" not in set(df["slide_id"]) and df.loc[df["slide_id"] == "test_114", "label"].item() == "tumor"


@pytest.mark.parametrize("name", ["tcga_nsclc", "tcga_brca", *SURVIVAL])
def test_tcga_case_is_the_patient_barcode(name: str) -> None:
    df = read(name)
    assert (df["case_id"] == df["slide_id"].str[:12]).all() and df["case_id"].str.fullmatch(r"TCGA-\w\w-\w{4}").all()
    assert not df["slide_id"].str.contains(r"/|\.svs$|\.pt$").any()  # server paths and extensions stripped


@pytest.mark.parametrize("name", SURVIVAL)
def test_survival_tables(name: str) -> None:
    df = read(name)
    assert list(df.columns) == ["slide_id", "case_id", "survival_months", "event"] and df.notna().all().all()
    per_case = df.groupby("case_id").agg(m=("survival_months", "nunique"), e=("event", "nunique"),
                                         event=("event", "first"))
    assert (per_case[["m", "e"]] == 1).all().all(), "one time and one event per patient"
    assert (len(df), len(per_case), int(per_case["event"].sum())) == SURVIVAL[name]
    assert set(df["event"]) == {0, 1} and df["slide_id"].is_unique
    assert (df["survival_months"] > 0).all() and df["survival_months"].max() < 300


def test_r2t_tables_agree_with_mambamil_where_they_overlap() -> None:
    """RRT-MIL's months (days / 30) were rescaled to days / 30.44: shared patients agree to rounding."""
    for c in ("blca", "luad"):
        a = read(f"tcga_{c}_os").groupby("case_id").first()
        b = read(f"tcga_{c}_os_r2t").groupby("case_id").first()
        both = a.join(b, rsuffix="_r2t", how="inner")
        assert len(both) >= 367 and (both["event"] == both["event_r2t"]).all()
        assert (both["survival_months"] - both["survival_months_r2t"]).abs().max() <= 0.011


@pytest.mark.parametrize("name", [*CLASSIFICATION, *SURVIVAL])
def test_every_table_has_a_data_config(name: str) -> None:
    cfg = OmegaConf.load(Path(CONF_DIR) / "data" / f"{name}.yaml")
    assert resolve_cohort_csv(cfg.source.cohort_csv) == COHORT_DIRS[0] / f"{name}.csv"
    assert cfg.get("requires_task") == (None if name in CLASSIFICATION else "survival")
    if name in CLASSIFICATION:
        assert list(cfg.source.label_map) == sorted(CLASSIFICATION[name][2])
