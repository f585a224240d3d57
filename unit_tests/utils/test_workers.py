"""DataLoader workers end with their parent, also when it is killed with SIGKILL while they are busy."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from milkit.utils.workers import exit_with_parent

ROOT = Path(__file__).resolve().parents[2]

# A loader whose workers are busy (a slow slide read) when the parent dies; prints the workers' pids.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset
    from milkit.features.dataset import tile_loader

    class SlowReads(Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            if i >= 2:
                time.sleep(120)
            return torch.tensor(os.getpid())

    data = SlowReads()
    loader = tile_loader(data, num_workers=2) if sys.argv[1] == "milkit" else DataLoader(data, None, num_workers=2)
    it = iter(loader)
    print(*{int(next(it)) for _ in range(2)}, flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only the container's init may not have reaped it


def _start(kind: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, kind], env=env, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and proc.pid not in pids
    return proc, pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_exit_when_the_parent_is_killed() -> None:
    guarded, plain = _start("milkit"), _start("plain")
    try:
        for proc, _ in (guarded, plain):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(_alive, guarded[1])) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, guarded[1])), "milkit's workers outlived their parent"
        assert all(map(_alive, plain[1])), "control: PyTorch's busy workers stay (what milkit's guard prevents)"
    finally:
        for pid in guarded[1] + plain[1]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_every_milkit_loader_carries_the_guard() -> None:
    from milkit.continual.runner import _loader
    from milkit.data.datamodule import MILDataModule
    from milkit.data.splits import make_cv_splits
    from milkit.data.synthetic import SyntheticSource
    from milkit.features.dataset import tile_loader

    source = SyntheticSource(n_bags=12, max_size=8)
    splits = make_cv_splits(source.records, 3, 0)
    dm = MILDataModule(source, splits[splits["fold"] == 0], batch_size=2, num_workers=1)
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(),
               _loader([source.load(b) for b in splits["bag_id"][:2]], 1, False, num_workers=1), tile_loader([], 1)]
    for loader in loaders:
        assert loader.worker_init_fn.func is exit_with_parent and loader.worker_init_fn.keywords == {
            "parent_pid": os.getpid()}
