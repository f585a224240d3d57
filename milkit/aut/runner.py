"""The algorithmic-unit-test suite: every selected registered model × test × seed, then a report.

``run_suite(cfg)`` accepts the Hydra config of ``milkit/conf/aut.yaml`` (or a ``SuiteConfig``/plain mapping). Models
come only from the model registry, so a model is testable the day it is registered; ``methods`` trains each
with training methods of ``milkit/conf/method`` (an ABMIL trained with MHIM is reported as ``abmil+mhim``).
Runs are independent (own data seed, model seed) and go to a process pool of ``jobs`` single-threaded workers;
a failing run is recorded with its error and the suite goes on. Order-dependent models
(``permutation_invariant=False``) see their instances shuffled (``shuffle_order_dependent``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from milkit.aut.execute import execute
from milkit.aut.generators import AUT_TESTS, make_test
from milkit.aut.property_check import monotonicity_check
from milkit.aut.report import (VerdictRule, merge_reports, plot_curves, render_markdown, summarize,
                               write_report)
from milkit.aut.trainer import Protocol, Standardized, standardize, train_and_evaluate
from milkit.cli import CONF_DIR
from milkit.errors import ConfigError, MILKitError, RunInterrupted
from milkit.models import create_model, list_models, model_info
from milkit.training.methods import TrainingMethod

log = logging.getLogger(__name__)

__all__ = ["SuiteConfig", "run_suite", "run_one", "select_models"]

DEFAULT_TESTS = ("single_concept", "threshold_poison", "false_frequency")


@dataclass
class SuiteConfig:
    """Everything ``milkit/conf/aut.yaml`` sets (see there and ``docs/aut.md`` for the meaning of each key). The
    defaults here are the library's: one worker and no ``model_kwargs`` (models use their ``tiny_kwargs``);
    the command line's ``milkit/conf/aut.yaml`` sets 2 workers and the suite's model sizes."""

    protocol_name: str = "fast"              # recorded in the report (milkit/conf/protocol/<name>.yaml sets the rest)
    models: list[str] | None = None          # None: registered models with metadata aut=True (see select_models)
    methods: list[str] = field(default_factory=lambda: ["supervised"])  # milkit/conf/method/<name>.yaml
    method_kwargs: dict[str, dict] = field(default_factory=dict)          # per method, over its yaml
    shuffle_order_dependent: bool = True     # order-dependent models: instances shuffled per bag at every step
    exclude: list[str] = field(default_factory=list)
    include_order_dependent: bool = False    # default selection includes models with permutation_invariant=False
    shuffle_instances: bool = False          # shuffle the instances inside every bag (default: the notebook's order)
    tests: list[str] = field(default_factory=lambda: list(DEFAULT_TESTS))
    seeds: int | list[int] = 3               # an int n means seeds 0..n-1
    n_train: int | None = None               # None: the test's default (10,000)
    n_test: int | None = None                # None: the test's default (1,000)
    test_kwargs: dict[str, dict] = field(default_factory=dict)
    model_kwargs: dict[str, dict] = field(default_factory=dict)
    fallback_kwargs: str = "tiny"            # models without a model_kwargs entry: "tiny" | "registry"
    epochs: int = 20
    batch_size: int = 64
    loss: str = "bce"
    grad_clamp: float | None = 5.0
    train_subset: str = "all"
    batching: str = "random"
    train_metrics: str = "last_epoch"
    optimizer: dict[str, Any] = field(default_factory=dict)
    property_pairs: int = 1000
    property_atol: float = 1e-5
    verdict: dict[str, float] = field(default_factory=dict)
    jobs: int = 1
    threads: int = 1                         # torch threads per run
    output: str | None = None                # report folder; None: do not write files
    verbose: bool = True
    merge: list[str] = field(default_factory=list)  # report folders to merge into one report (nothing is run)

    @classmethod
    def from_any(cls, cfg: Any) -> "SuiteConfig":
        if isinstance(cfg, cls):
            return cfg
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"aut config: expected a mapping, got {type(cfg).__name__}")
        data = {k: v for k, v in dict(cfg).items() if k not in ("hydra", "log_level")}  # the entry point's
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"aut config: unknown key(s) {sorted(unknown)}")
        return cls(**data)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else [int(s) for s in self.seeds]

    def protocol(self, shuffle_within_bags: bool = False) -> Protocol:
        return Protocol(epochs=self.epochs, batch_size=self.batch_size, loss=self.loss, grad_clamp=self.grad_clamp,
                        train_subset=self.train_subset, batching=self.batching, train_metrics=self.train_metrics,
                        shuffle_within_bags=shuffle_within_bags, optimizer=dict(self.optimizer))

    def shuffles(self, model: str) -> bool:
        """Whether ``model``'s instances are shuffled: order-dependent and ``shuffle_order_dependent``."""
        return self.shuffle_order_dependent and not model_info(model)["permutation_invariant"]

    def method(self, name: str) -> TrainingMethod:
        """A fresh training method from ``milkit/conf/method/<name>.yaml`` with ``method_kwargs[name]`` on top."""
        path = os.path.join(CONF_DIR, "method", f"{name}.yaml")
        if not os.path.isfile(path):
            known = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "method")) if f.endswith(".yaml"))
            raise ConfigError(f"aut config 'methods': unknown method '{name}' (known: {', '.join(known)})")
        conf = OmegaConf.merge(OmegaConf.load(path), self.method_kwargs.get(name) or {})
        try:
            return instantiate(conf)
        except Exception as err:  # noqa: BLE001  (hydra wraps the constructor's error)
            cause = err.__cause__ or err
            raise ConfigError(f"aut config 'method_kwargs.{name}': {' '.join(str(cause).split())}") from None

    def rule(self) -> VerdictRule:
        try:
            return VerdictRule(**self.verdict)
        except TypeError as err:
            raise ConfigError(f"aut config key 'verdict': {err}") from None

    def kwargs_for(self, model: str) -> dict[str, Any]:
        if model in self.model_kwargs:
            return dict(self.model_kwargs[model] or {})
        if self.fallback_kwargs not in {"tiny", "registry"}:
            raise ConfigError(f"fallback_kwargs: '{self.fallback_kwargs}' is not 'tiny' or 'registry'")
        return dict(model_info(model)["tiny_kwargs"]) if self.fallback_kwargs == "tiny" else {}

    def test_args(self, test: str) -> dict[str, Any]:
        sizes = {k: v for k, v in (("n_train", self.n_train), ("n_test", self.n_test)) if v is not None}
        return {**sizes, **dict(self.test_kwargs.get(test) or {})}


def select_models(cfg: SuiteConfig) -> list[str]:
    """``cfg.models`` if given (unknown names fail), else every registered model with metadata ``aut=True`` that
    is permutation invariant (order-dependent ones too with ``include_order_dependent``); minus ``exclude``
    (names not registered there are ignored, so one config serves checkouts with different models)."""
    if cfg.models is not None:
        names = list(cfg.models)
        for name in names:
            try:
                model_info(name)
            except MILKitError as err:
                raise ConfigError(f"aut config 'models': {err}") from None
    else:
        names = [n for n in list_models(aut=True)
                 if cfg.include_order_dependent or model_info(n)["permutation_invariant"]]
    return [n for n in names if n not in set(cfg.exclude)]


def _label(test: str, kwargs: Mapping[str, Any]) -> str:
    """Report name of a test: non-default generator options are appended, e.g. ``single_concept[faithful=False]``."""
    extra = {k: v for k, v in kwargs.items() if k not in {"n_train", "n_test"}}
    return test + ("[" + ",".join(f"{k}={v}" for k, v in sorted(extra.items())) + "]" if extra else "")


def _preflight(cfg: SuiteConfig, models: list[str]) -> None:
    """Fail before any training on unknown tests, bad test options or bad model keyword arguments."""
    for test in cfg.tests:
        make_test(test, seed=0, **{**cfg.test_args(test), "n_train": 4, "n_test": 4})
    for name in cfg.methods:
        cfg.method(name)
    for name in models:
        try:
            create_model(name, in_dim=16, num_classes=cfg.protocol().num_classes, **cfg.kwargs_for(name))
        except TypeError as err:
            raise ConfigError(f"aut config 'model_kwargs.{name}': {err}") from None
        except Exception:  # noqa: BLE001  (any other failure is recorded per run)
            pass


@lru_cache(maxsize=2)
def _dataset(test: str, seed: int, args_json: str, shuffle: bool) -> tuple[Standardized, Standardized, int]:
    ds = make_test(test, seed=seed, **json.loads(args_json))
    if shuffle:
        rng = np.random.default_rng([seed, 1])
        ds.train, ds.test = ds.train.shuffled(rng), ds.test.shuffled(rng)
    train, test_set = standardize(ds.train, ds.test)
    return train, test_set, ds.train.x.shape[-1]


def run_one(model: str, test: str, seed: int, cfg: SuiteConfig, method: str = "supervised") -> dict[str, Any]:
    """Train and score one model (with one training method) on one test with one seed; errors are recorded,
    not raised. The report names the pair ``model`` for supervised training, else ``model+method``."""
    args = cfg.test_args(test)
    info = model_info(model)
    shuffle = cfg.shuffles(model)
    label = model if method == "supervised" else f"{model}+{method}"
    rec: dict[str, Any] = {"model": label, "base_model": model, "method": method, "shuffled": shuffle,
                           "test": _label(test, cfg.test_kwargs.get(test) or {}), "seed": seed,
                           "model_assumption": info["mil_assumption"],
                           "test_assumption": AUT_TESTS.meta(test)["assumption"], "error": None}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        torch.set_num_threads(cfg.threads)
        train, test_set, d = _dataset(test, seed, json.dumps(args, sort_keys=True), cfg.shuffle_instances or shuffle)
        torch.manual_seed(seed)
        protocol = cfg.protocol(shuffle_within_bags=shuffle)
        net = create_model(model, in_dim=d, num_classes=protocol.num_classes, **cfg.kwargs_for(model))
        rec["n_params"] = sum(p.numel() for p in net.parameters())
        rec.update(train_and_evaluate(net, train, test_set, protocol, seed, info["needs_coords"], cfg.method(method)))
        if cfg.property_pairs > 0:
            rec["property"] = monotonicity_check(net, test_set, train, cfg.property_pairs, seed,
                                                 atol=cfg.property_atol, needs_coords=info["needs_coords"])
    except Exception as err:  # noqa: BLE001  (batch job: record and go on)
        rec["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]
    rec["seconds"], rec["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    return rec


def run_suite(cfg: Any) -> dict[str, Any]:
    """Run the suite; print the report; write ``aut_report.md``/``.json`` to ``cfg.output`` when set.

    Returns ``{"summary": rows, "runs": runs, "meta": meta, "markdown": str, "paths": [md, json] or []}``.
    """
    cfg = SuiteConfig.from_any(cfg)
    if cfg.merge:
        merged = merge_reports(cfg.merge, cfg.output)
        if cfg.verbose:
            log.info("\n" + merged["markdown"])
        return merged
    models = select_models(cfg)
    if not models or not cfg.tests or not cfg.seed_list or not cfg.methods:
        raise ConfigError("aut config: nothing to run (models, methods, tests and seeds must be non-empty)")
    rule, protocol = cfg.rule(), cfg.protocol()
    _preflight(cfg, models)
    tasks = [(m, t, s, k) for t in cfg.tests for s in cfg.seed_list for m in models for k in cfg.methods]
    load0, t0 = os.getloadavg(), time.perf_counter()
    runs, stopped = execute(tasks, cfg, run_one)
    if stopped and not runs:
        raise RunInterrupted(f"{stopped} before the first run finished; no report written")
    wall = time.perf_counter() - t0
    cpu = sum(r["cpu_seconds"] for r in runs)
    meta = {"protocol_name": cfg.protocol_name, "models": models, "methods": list(cfg.methods),
            "shuffled_models": [m for m in models if cfg.shuffles(m)], "tests": list(cfg.tests), "seeds": cfg.seed_list, "n_train": cfg.n_train,
            "n_test": cfg.n_test, "shuffle_instances": cfg.shuffle_instances, "protocol": dataclasses.asdict(protocol), "verdict_rule": dataclasses.asdict(rule),
            "jobs": cfg.jobs, "config": dataclasses.asdict(cfg), "wall_time_s": wall, "cpu_time_s": cpu,
            "n_runs": len(runs), **({"interrupted": f"{stopped} after {len(runs)} of {len(tasks)} runs"} if stopped else {}),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "load_average_start": load0,
                            "load_average_end": os.getloadavg()}}
    rows = summarize(runs, rule)
    if cfg.output:
        meta["plots"] = [str(p) for p in plot_curves(runs, cfg.output, rule.fail_below)]
    markdown = render_markdown(rows, meta)
    paths = list(write_report(cfg.output, runs, rows, meta)) if cfg.output else []
    if cfg.verbose:
        log.info("\n" + markdown)
        for p in paths:
            log.info(f"report written to {p}")
    if stopped:
        raise RunInterrupted(f"{meta['interrupted']}; the report of the finished runs: "
                             f"{paths[0] if paths else 'not written (no output folder)'}")
    return {"summary": rows, "runs": runs, "meta": meta, "markdown": markdown, "paths": paths}
