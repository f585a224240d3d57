"""Rebuild ``data/cohorts/*.csv`` from the upstream label tables (provenance of the committed tables).

The upstream repositories are read at pinned commits; only their public TCGA / CAMELYON16 metadata is used.
Check them out under one folder, named ``<owner>+<name>`` (e.g. ``git clone https://github.com/DearCaat/RRT-MIL
up/DearCaat+RRT-MIL && git -C up/DearCaat+RRT-MIL checkout <commit>``), then::

    python data/build_cohorts.py --upstream up/      # rewrites data/cohorts/*.csv (identical output)

Normalised formats: classification ``slide_id, case_id, label[, split]``; survival
``slide_id, case_id, survival_months, event`` (months = days / 30.44, event 1 = death). Rows sorted by slide_id.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from milkit.utils.io import atomic_path

#: upstream repositories and the commits read
COMMITS = {
    "DearCaat+RRT-MIL": "7ecbdfb8955594b430a8b93cf880f22cfaaecacc",
    "DearCaat+MHIM-MIL": "9d0c91abeb1b39f91c161b47cf14bc44f5a89da3",
    "isyangshu+MambaMIL": "9aea39efc13fdcd3703b5b54c28a64887b4acbd7",
    "szc19990412+TransMIL": "9d6aee57c7c72375fb9132dc58cd8c9b0f0a949c",
}
MAMBAMIL_OS = ("BLCA", "BRCA", "COADREAD", "KIRC", "KIRP", "LUAD", "STAD", "UCEC")
RRT_OS = ("BLCA", "LUAD", "LUSC")
DAYS_PER_MONTH = 30.44  # MambaMIL / CLAM convention; RRT-MIL's tables use days / 30


def camelyon16(up: Path) -> pd.DataFrame:
    """Official 270 training + 129 test slides (test_049 was withdrawn by the organisers) with the official test
    labels, from TransMIL's fold0.csv (its train+val = the official training set); cross-checked against
    MHIM-MIL's label_c16.csv (398 slides: it also drops test_114)."""
    t = pd.read_csv(up / "szc19990412+TransMIL/dataset_csv/camelyon16/fold0.csv", index_col=0)
    parts = []
    for col, split in (("train", "train"), ("val", "train"), ("test", "test")):
        x = t[[col, f"{col}_label"]].dropna(subset=[col])
        parts.append(pd.DataFrame({"slide_id": x[col], "y": x[f"{col}_label"].astype(int), "split": split}))
    df = pd.concat(parts)
    train = df["split"] == "train"
    assert (df.loc[train, "y"] == df.loc[train, "slide_id"].str.startswith("tumor")).all(), "label ≠ file name"
    mhim = pd.read_csv(up / "DearCaat+MHIM-MIL/datasets/dataset_csv/label_c16.csv", header=None, names=["slide_id", "y"])
    both = df.merge(mhim, on="slide_id", suffixes=("", "_mhim"))
    assert len(both) == len(mhim) and (both["y"] == both["y_mhim"]).all(), "TransMIL and MHIM-MIL labels differ"
    return pd.DataFrame({"slide_id": df["slide_id"], "case_id": df["slide_id"],
                         "label": df["y"].map({0: "normal", 1: "tumor"}), "split": df["split"]})


def tcga_nsclc(up: Path) -> pd.DataFrame:
    """MambaMIL's slide table (1053 diagnostic slides); its case_id column repeats the slide id, so the case is
    the 12-character barcode. RRT-MIL / MHIM-MIL list exactly the same 956 cases with the same labels."""
    m = pd.read_csv(up / "isyangshu+MambaMIL/dataset_csv/LUAD_LUSC.csv")
    rrt = pd.read_csv(up / "DearCaat+RRT-MIL/data_label/label_nsclc.csv", header=None, names=["case_id", "label"])
    out = pd.DataFrame({"slide_id": m["slide_id"], "case_id": m["slide_id"].str[:12], "label": m["label"]})
    cases = out.groupby("case_id")["label"].first()
    assert cases.sort_index().equals(rrt.set_index("case_id")["label"].sort_index()), "NSCLC case lists differ"
    return out


def tcga_brca(up: Path) -> pd.DataFrame:
    """RRT-MIL's IDC/ILC table is per case (no slide ids): slide_id holds the case barcode, which milkit's
    matcher expands to every slide file of that case (what RRT-MIL's loader does)."""
    b = pd.read_csv(up / "DearCaat+RRT-MIL/data_label/label_brca.csv", header=None, names=["case_id", "label"])
    return pd.DataFrame({"slide_id": b["case_id"], "case_id": b["case_id"], "label": b["label"]})


def mambamil_os(up: Path, cohort: str) -> pd.DataFrame:
    """MambaMIL ``<X>_processed.csv``: months already days / 30.44; censorship → event; '.svs' dropped."""
    d = pd.read_csv(up / f"isyangshu+MambaMIL/dataset_csv/{cohort}_processed.csv")
    return pd.DataFrame({"slide_id": d["slide_id"].str.removesuffix(".svs"), "case_id": d["case_id"],
                         "survival_months": d["survival_months"].round(2), "event": 1 - d["censorship"].astype(int)})


def rrt_os(up: Path, cohort: str) -> pd.DataFrame:
    """RRT-MIL ``<X>_Splits.csv`` (one row per patient, ';'-joined server paths; months = days / 30):
    one row per slide, paths stripped to the slide id, months rescaled to days / 30.44."""
    r = pd.read_csv(up / f"DearCaat+RRT-MIL/Survival/csv/{cohort}_Splits.csv")
    r = r.assign(path=r["WSI"].str.split(";")).explode("path")
    return pd.DataFrame({"slide_id": r["path"].str.rsplit("/", n=1).str[-1].str.removesuffix(".pt"),
                         "case_id": r["ID"], "survival_months": (r["Event"] * 30 / DAYS_PER_MONTH).round(2),
                         "event": r["Status"].astype(int)})


def build(up: Path) -> dict[str, pd.DataFrame]:
    """Every cohort table by name."""
    tables = {"camelyon16": camelyon16(up), "tcga_nsclc": tcga_nsclc(up), "tcga_brca": tcga_brca(up)}
    for c in MAMBAMIL_OS:
        tables[f"tcga_{c.lower()}_os"] = mambamil_os(up, c)
    tables["tcga_lusc_os"] = rrt_os(up, "LUSC")
    for c in ("BLCA", "LUAD"):  # R²T-MIL / MHIM-MIL v2 use their own patient lists for these two
        tables[f"tcga_{c.lower()}_os_r2t"] = rrt_os(up, c)
    return {k: v.sort_values("slide_id").reset_index(drop=True) for k, v in tables.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", type=Path, required=True, help="folder of <owner>+<name> checkouts")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cohorts")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, df in build(args.upstream).items():
        with atomic_path(args.out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
        print(f"{name}: {len(df)} slides, {df['case_id'].nunique()} cases")


if __name__ == "__main__":
    main()
