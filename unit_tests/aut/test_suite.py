"""The suite at CI size: facts that hold by construction, report files, configuration and error handling."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from milkit.cli import CONF_DIR
from milkit.aut.report import VerdictRule, rerender, summarize
from milkit.aut import runner
from milkit.aut.runner import SuiteConfig, run_suite, select_models
from milkit.errors import ConfigError
from milkit.models import create_model, list_models

ROOT = Path(__file__).resolve().parents[2]
CI = dict(tests=["single_concept"], seeds=[0, 1], epochs=4, n_train=1000, n_test=400, batch_size=32,
          property_pairs=300, model_kwargs={"mi_net": {"embed_dims": [32]}, "mean": {"embed_dims": [32]}},
          verbose=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("aut")
    return run_suite({**CI, "models": ["mi_net", "mean"], "output": str(out)}), out


def test_instance_max_passes_and_mean_pooling_fails_test_1(suite) -> None:
    result, _ = suite
    rows = {r["model"]: r for r in result["summary"]}
    assert rows["mi_net"]["verdict"] == "PASS" and rows["mi_net"]["test_auc"] > 0.8
    assert rows["mean"]["verdict"] == "FAIL" and rows["mean"]["test_auc"] < 0.1 and rows["mean"]["train_auc"] > 0.95
    assert rows["mi_net"]["seed_verdicts"] == ["PASS", "PASS"] and rows["mean"]["seed_verdicts"] == ["FAIL", "FAIL"]


def test_property_check_is_zero_for_instance_max_and_positive_for_mean(suite) -> None:
    result, _ = suite
    for run in result["runs"]:
        lowered = run["property"]["lowered_fraction"]
        assert (lowered == 0.0) if run["model"] == "mi_net" else (lowered > 0.2)
    # trained mean pooling: the poison it learned as negative evidence lowers the score
    poison = [r["property"]["lowered_by_role"]["poison"] for r in result["runs"] if r["model"] == "mean"]
    assert min(poison) > 0.9


def test_report_files_are_well_formed(suite) -> None:
    result, out = suite
    md = (out / "aut_report.md").read_text()
    assert md.startswith("# Algorithmic unit tests")
    assert "| mi_net | standard | PASS (" in md and "| mean | none | FAIL (" in md
    assert "Wall time:" in md and md == result["markdown"]
    data = json.loads((out / "aut_report.json").read_text())
    assert set(data) == {"meta", "summary", "runs"} and len(data["runs"]) == 4
    assert data["meta"]["wall_time_s"] > 0 and data["meta"]["protocol"]["epochs"] == 4
    run = data["runs"][0]
    assert {"model", "test", "seed", "train_auc", "test_auc", "property", "top_roles", "seconds"} <= set(run)
    assert [s["verdict"] for s in data["summary"]] == ["PASS", "FAIL"]
    assert rerender(out / "aut_report.json") == md
    strict = rerender(out / "aut_report.json", VerdictRule(fail_below=0.99))
    assert "| mi_net | standard | FAIL (" in strict and "any judged point of any seed < 0.99" in strict
    assert all(len(r["test_auc_curve"]) == len(r["train_auc_curve"]) == 4 for r in data["runs"])
    assert [Path(p).name for p in data["meta"]["plots"]] == ["aut_single_concept.png"]
    assert (out / "aut_single_concept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![aut_single_concept](aut_single_concept.png)" in md
    progress = [json.loads(line) for line in (out / "aut_runs.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["seed"]) for r in progress) == sorted((r["model"], r["seed"]) for r in data["runs"])


def test_verdict_rule_on_auc_traces() -> None:
    rule = VerdictRule()
    train = [0.55, 0.7, 0.95, 0.97, 0.99]
    assert rule(0.99, 0.95, "none", "standard", train, [0.45, 0.8, 0.9, 0.95, 0.95]) == "PASS"  # before onset
    assert rule(0.99, 0.95, "none", "standard", train, [0.6, 0.8, 0.49, 0.95, 0.95]) == "FAIL"  # one dip fails
    assert rule(0.99, 0.95, "none", "standard", train, [0.6, 0.5, 0.9, 0.95, 0.95]) == "PASS"  # 0.5 is not below
    assert rule.judged(train, [0.45, 0.8, 0.9, 0.95, 0.95]) == [0.8, 0.9, 0.95, 0.95]
    assert rule.judged([0.5, 0.55], [0.3, 0.2]) == []  # never learned: nothing judged
    assert rule(0.55, 0.2, "none", "standard", [0.5, 0.55], [0.3, 0.2]) == "PASS"  # († in the report)
    assert rule(0.99, 0.7, "none", "standard", train, [0.6, 0.8, 0.9, 0.8, 0.7]) == "SUSPECT"
    assert rule.combine(["PASS", "FAIL", "PASS"]) == "FAIL"
    assert rule.combine(["PASS", "SUSPECT", "PASS"]) == "UNSTABLE"
    assert rule.combine(["NOT-EXPRESSIVE"] * 2) == "NOT-EXPRESSIVE"
    runs = [{"model": "m", "test": "t", "seed": s, "model_assumption": "none", "test_assumption": "standard",
             "error": None, "train_auc": 0.99, "test_auc": 0.95, "test_acc": 0.9, "seconds": 1.0, "cpu_seconds": 1.0,
             "train_auc_curve": train, "test_auc_curve": curve}
            for s, curve in enumerate([[0.6, 0.8, 0.9, 0.95, 0.95], [0.6, 0.3, 0.9, 0.95, 0.95]])]
    row = summarize(runs, rule)[0]
    assert row["verdict"] == "FAIL" and row["seed_verdicts"] == ["PASS", "FAIL"]
    assert row["worst_auc"] == 0.3 and row["n_judged"] == 8 and row["below_fraction"] == 1 / 8
    assert row["test_auc"] == 0.95  # last epoch, mean over seeds


def test_verdict_rule() -> None:
    rule = VerdictRule()
    assert rule(0.99, 0.02, "none", "standard") == "FAIL"
    assert rule(0.99, 0.70, "none", "standard") == "SUSPECT"
    assert rule(0.95, 0.90, "none", "threshold") == "PASS"
    assert rule(0.80, 0.75, "standard", "threshold") == "NOT-EXPRESSIVE"
    assert rule(0.80, 0.55, "standard", "threshold") == "NOT-EXPRESSIVE"
    assert rule(0.80, 0.40, "standard", "threshold") == "FAIL"  # inverted: exploited something
    assert rule(0.80, 0.75, "threshold", "threshold") == "PASS"
    assert rule(float("nan"), 0.5, "none", "standard") == "ERROR"


def test_failing_run_is_recorded_and_the_suite_goes_on() -> None:
    result = run_suite({**CI, "models": ["mi_net", "abmil"], "seeds": [0], "epochs": 1, "n_train": 100,
                        "n_test": 40, "model_kwargs": {"mi_net": {"embed_dims": [8]}, "abmil": {"dropout": 2.0}},
                        "shuffle_instances": True})
    rows = {r["model"]: r for r in result["summary"]}
    assert rows["abmil"]["verdict"] == "ERROR" and "dropout probability" in rows["abmil"]["errors"][0]
    assert rows["mi_net"]["verdict"] in {"PASS", "FAIL", "SUSPECT"}
    assert "## Errors" in result["markdown"] and "instances shuffled within bags" in result["markdown"]


def test_methods_and_shuffled_order_dependent_models_run() -> None:
    result = run_suite({**CI, "models": ["transmil", "abmil"], "methods": ["supervised", "mhim_v2"], "seeds": [0],
                        "epochs": 1, "n_train": 80, "n_test": 40, "property_pairs": 20,
                        "model_kwargs": {"abmil": {"embed_dims": [8], "attn_dim": 4}},
                        "method_kwargs": {"mhim_v2": {"grn_heads": 1, "grn_dim_head": 4}}})
    runs = {r["model"]: r for r in result["runs"]}
    assert set(runs) == {"transmil", "transmil+mhim_v2", "abmil", "abmil+mhim_v2"}
    assert all(r["error"] is None and len(r["test_auc_curve"]) == 1 for r in runs.values()), runs
    assert runs["transmil"]["shuffled"] and not runs["abmil"]["shuffled"]
    assert runs["abmil+mhim_v2"]["base_model"] == "abmil" and runs["abmil+mhim_v2"]["method"] == "mhim_v2"
    assert result["meta"]["shuffled_models"] == ["transmil"]
    assert "shuffled at every step and tested on bags shuffled once: transmil." in result["markdown"]


@pytest.mark.parametrize("bad,match", [
    ({"models": ["abmill"]}, "unknown model 'abmill'"),
    ({"tests": ["nope"]}, "unknown algorithmic unit test 'nope'"),
    ({"model_kwargs": {"mi_net": {"widht": 3}}}, "model_kwargs.mi_net"),
    ({"test_kwargs": {"single_concept": {"v2": True}}}, "unexpected keyword argument 'v2'"),
    ({"epochs": 0}, "epochs and batch_size"),
    ({"verdict": {"fail": 0.4}}, "verdict"),
    ({"modles": ["mi_net"]}, "unknown key"),
    ({"methods": ["mhimm"]}, "unknown method 'mhimm'"),
    ({"methods": ["mhim"], "method_kwargs": {"mhim": {"score": "max"}}}, "method.score must be one of"),
])
def test_bad_config_fails_before_training(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_suite({**CI, "models": ["mi_net"], **bad})


def test_default_model_selection_reads_registry_metadata(monkeypatch) -> None:
    chosen = select_models(SuiteConfig(exclude=["mean", "not_registered_here"]))
    assert {"mi_net", "threshold_mil", "aut_attention", "tran_mil"} <= set(chosen) and "mean" not in chosen
    meta = {"a": {"permutation_invariant": True}, "b": {"permutation_invariant": False}}
    monkeypatch.setattr(runner, "list_models", lambda **kw: ["a", "b"] if kw == {"aut": True} else ["a", "b", "c"])
    monkeypatch.setattr(runner, "model_info", lambda name: meta[name])
    assert select_models(SuiteConfig()) == ["a"]
    assert select_models(SuiteConfig(include_order_dependent=True)) == ["a", "b"]
    assert select_models(SuiteConfig(models=["b"])) == ["b"]  # named models are always run


def test_conf_composes_into_a_valid_suite_config() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="aut", overrides=["seeds=1", "output=null"])
    suite = SuiteConfig.from_any(cfg)
    assert suite.tests == ["single_concept", "threshold_poison", "false_frequency"] and suite.epochs == 20
    assert suite.protocol().num_classes == 1 and suite.rule() == VerdictRule()
    for name in set(suite.model_kwargs) & set(list_models()):  # entries for models registered in this checkout
        create_model(name, in_dim=16, num_classes=1, **suite.kwargs_for(name))


def test_script_runs(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "scripts" / "aut.py"), "models=[mi_net]", "tests=[single_concept]", "seeds=1",
            "epochs=1", "n_train=40", "n_test=20", "jobs=1", "property_pairs=10", f"output={tmp_path}"]
    ok = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)  # a loaded shared CPU
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "aut_report.md").exists() and "report written to" in ok.stdout


def test_script_reports_a_bad_config_in_one_line(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("aut_script", ROOT / "scripts" / "aut.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="aut", overrides=["models=[nope]", f"output={tmp_path}"])
    with pytest.raises(SystemExit) as info:
        script.main.__wrapped__(cfg)  # the function under @hydra.main
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: aut config 'models': unknown model 'nope' (known: " + ", ".join(list_models()) + ")")


def test_parts_of_a_suite_merge_into_the_report_of_the_whole(suite, tmp_path) -> None:
    result, out = suite
    part = tmp_path / "part2"
    run_suite({**CI, "models": ["mi_net"], "tests": ["false_frequency"], "seeds": [0], "output": str(part)})
    merged = run_suite({"merge": [str(out), str(part)], "output": str(tmp_path / "all"), "verbose": False})
    rows = {(r["model"], r["test"]): r for r in merged["summary"]}
    assert set(rows) == {("mi_net", "single_concept"), ("mean", "single_concept"), ("mi_net", "false_frequency")}
    assert rows[("mean", "single_concept")]["verdict"] == "FAIL" and merged["meta"]["n_runs"] == 5
    assert merged["meta"]["tests"] == ["single_concept", "false_frequency"]
    first = json.loads((out / "aut_report.json").read_text())["meta"]["wall_time_s"]
    second = json.loads((part / "aut_report.json").read_text())["meta"]["wall_time_s"]
    assert merged["meta"]["wall_time_s"] == pytest.approx(first + second)
    md = (tmp_path / "all" / "aut_report.md").read_text()
    assert "| mi_net | standard | PASS (" in md and md == merged["markdown"]
    assert (tmp_path / "all" / "aut_false_frequency.png").exists()
    other = tmp_path / "other"
    run_suite({**CI, "models": ["mi_net"], "seeds": [0], "epochs": 2, "output": str(other)})
    with pytest.raises(ConfigError, match="another protocol"):
        run_suite({"merge": [str(out), str(other)], "verbose": False})
    with pytest.raises(ConfigError, match="cannot read"):
        run_suite({"merge": [str(tmp_path / "missing")], "verbose": False})
