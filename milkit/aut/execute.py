"""Running the suite's independent runs: in this process or a pool of single-threaded workers, with each finished
run appended to ``<output>/aut_runs.jsonl`` at once, and Ctrl-C / SIGTERM (a cluster's time limit) stopping the
suite with the runs finished so far kept for the report."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

import torch

from milkit.aut.report import json_ready
from milkit.errors import RunInterrupted
from milkit.utils.signals import StopSignal, signal_stops_the_run

__all__ = ["execute"]

log = logging.getLogger("milkit.aut.runner")

def _line(i: int, n: int, r: dict) -> str:
    head = f"[{i}/{n}] {r['model']} × {r['test']} seed {r['seed']}:"
    if r["error"]:
        return f"{head} ERROR {r['error']}"
    low = r.get("property", {}).get("lowered_fraction")
    return (f"{head} train AUC {r['train_auc']:.3f} test AUC {r['test_auc']:.3f} (min {min(r['test_auc_curve']):.3f})"
            + (f" lowered {low:.3f}" if low is not None else "") + f" ({r['seconds']:.1f} s)")


def _progress(cfg: Any) -> Callable[[int, int, dict], None]:
    """A callback that appends each finished run to ``<output>/aut_runs.jsonl`` and prints its line."""
    emit = log.info if cfg.verbose else (lambda *_, **__: None)
    path = os.path.join(cfg.output, "aut_runs.jsonl") if cfg.output else None
    if path:
        os.makedirs(cfg.output, exist_ok=True)
        open(path, "w").close()

    def done(i: int, n: int, rec: dict) -> None:
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(json_ready(rec), allow_nan=False) + "\n")
        emit(_line(i, n, rec))
    return done


def execute(tasks: list[tuple], cfg: Any, run_one: Callable[..., dict]) -> tuple[list[dict], str | None]:
    """``run_one(model, test, seed, cfg, method)`` for every task; returns the finished runs in task order and,
    when Ctrl-C or SIGTERM stopped the suite, why (running workers are terminated, pending runs dropped)."""
    results: dict[int, dict] = {}
    done = _progress(cfg)
    stopped = None
    # SIGTERM (a cluster's time limit) as Ctrl-C; forked workers just exit (the parent terminates them anyway)
    with signal_stops_the_run(signal.SIGTERM, "stopped by SIGTERM", lambda: os._exit(143)) as term:
        try:
            if cfg.jobs <= 1:
                threads = torch.get_num_threads()
                try:
                    for i, task in enumerate(tasks):
                        results[i] = run_one(*task[:3], cfg, task[3])
                        done(len(results), len(tasks), results[i])
                        term.check()  # a SIGTERM whose exception was swallowed (inside a __del__) stops here
                finally:
                    torch.set_num_threads(threads)
            else:
                _in_pool(tasks, cfg, run_one, results, done, term)
        except (KeyboardInterrupt, RunInterrupted) as stop:
            stopped = str(stop) or "stopped by Ctrl-C"
    return [results[i] for i in sorted(results)], stopped


def _in_pool(tasks: list[tuple], cfg: Any, run_one: Callable[..., dict], results: dict[int, dict],
             done: Callable[[int, int, dict], None], term: StopSignal) -> None:
    # fork: workers inherit the registry (models registered outside milkit too) and need no __main__ guard;
    # safe here because every run is single-threaded (torch.set_num_threads(cfg.threads) in run_one)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context(method))
    try:
        futures = {pool.submit(run_one, *task[:3], cfg, task[3]): i for i, task in enumerate(tasks)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done(len(results), len(tasks), results[futures[fut]])
            term.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in mp.active_children():  # the runs in progress: their results would be dropped anyway
            child.terminate()
        raise
    pool.shutdown()
