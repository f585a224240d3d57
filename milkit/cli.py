"""Console entry points (``milkit-train`` ...). Each is a thin Hydra main around one milkit function.

Errors that milkit raises for bad input (``MILKitError``) and outputs that cannot be written (disk full,
read-only, a path under a regular file) are printed as one line and exit with status 2; Ctrl-C prints one line
saying where the run stopped and exits with 130. ``OutputDirCheck`` (a Hydra callback in every root config)
checks Hydra's own run folder before Hydra writes ``.hydra/`` into it.
Progress lines are the ``milkit`` loggers' records, shown at the config's ``log_level`` (:mod:`milkit.utils.log`).
"""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from milkit.errors import MILKitError, RunInterrupted, storage_error_line, worker_error_line
from milkit.utils.io import writable_dir
from milkit.utils.log import configure_cli_logging
from milkit.utils import dist  # noqa: F401  (registers ${milkit_rank_zero:} for the configs)

__all__ = ["CONF_DIR", "OutputDirCheck", "hydra_entry", "run_safely", "train_main", "eval_main", "preprocess_main",
           "aut_main", "infer_main", "continual_main"]

#: the packaged config folder ``milkit/conf`` (installed with the package; add your own with ``hydra.searchpath``)
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def _milkit_cause(exc: BaseException) -> BaseException | None:
    """The ``MILKitError`` (or missing config value) behind ``exc`` (Hydra wraps errors raised while instantiating ``_target_``s)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (MILKitError, MissingMandatoryValue)) or storage_error_line(exc) is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker comes back re-raised with the
    worker's traceback in its message; its last line is ``module.Class: message``."""
    if isinstance(exc, MissingMandatoryValue):
        return f"config key '{exc.full_key}' has no value; set it on the command line ({exc.full_key}=...)"
    if storage_error_line(exc) is not None:
        return storage_error_line(exc)
    msg = str(exc).strip()
    last = worker_error_line(exc)
    if last is not None:
        msg = last.split(": ", 1)[1] if ": " in last and "." in last.split(": ", 1)[0] else last
    return " ".join(msg.split("\n")[0].split())


def run_safely(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call ``fn(cfg)`` with milkit's progress lines shown at ``cfg.log_level`` (default INFO); turn a
    ``MILKitError`` (also one raised in a DataLoader worker), an output that cannot be written or a missing
    mandatory config value into one line on stderr and exit status 2, and Ctrl-C into one line and exit 130."""
    try:
        configure_cli_logging(OmegaConf.select(cfg, "log_level", default="INFO"))
        return fn(cfg)
    except (RunInterrupted, KeyboardInterrupt) as e:
        print(f"milkit: interrupted: {str(e) or 'stopped by Ctrl-C'}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        cause = _milkit_cause(e)
        if cause is None:
            raise
        print(f"milkit: error: {_one_line(cause)}", file=sys.stderr)
        sys.exit(2)


class OutputDirCheck(Callback):
    """Check that Hydra's run (or sweep) folder can be written before Hydra creates ``.hydra/`` in it: one line
    naming the folder and exit status 2, instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the folder's name
        try:
            # room for Hydra's .hydra/*.yaml (about 6 KB), which it writes before milkit can catch a full disk
            writable_dir(str(OmegaConf.select(config, key)), f"run folder ({key})", room=1 << 16)
        except MILKitError as e:
            print(f"milkit: error: {e}", file=sys.stderr)
            sys.exit(2)


def hydra_entry(config_name: str, target: str) -> Callable[[], Any]:
    """A ``@hydra.main`` function running ``target`` (``"module:function"``) on the composed config."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        module, fn = target.split(":")
        result = run_safely(getattr(importlib.import_module(module), fn), cfg)
        return result.get("objective") if isinstance(result, dict) else None

    return functools.wraps(main)(main)


train_main = hydra_entry("train", "milkit.training.train:train")
eval_main = hydra_entry("eval", "milkit.training.evaluate:evaluate")
preprocess_main = hydra_entry("preprocess", "milkit.preprocess:preprocess")
aut_main = hydra_entry("aut", "milkit.aut.runner:run_suite")
infer_main = hydra_entry("infer", "milkit.inference:infer")
continual_main = hydra_entry("continual", "milkit.continual:run_continual")
