"""MHIM through train(cfg): the two-stage run, checkpoints with the teacher, resume, learning a synthetic task."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from milkit.training.train import build_run_components, resolve_splits, train

# an easy synthetic task that a tiny ABMIL learns in a few epochs
LEARN = ["data.source.signal=4", "data.source.witness_rate=0.25", "data.source.n_bags=40", "data.batch_size=2",
         "optimizer.lr=5e-3", "trainer.max_epochs=8", "model=abmil", "model.embed_dims=[16]", "model.attn_dim=8"]


def load_state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_baseline_then_mhim_learns_with_the_baselines_teacher(make_cfg, tmp_path) -> None:
    base = train(make_cfg(*LEARN, name="base"))
    teacher_init = f"'{tmp_path / 'base'}/{{fold}}/checkpoints/best.ckpt'"
    mhim = train(make_cfg(*LEARN, "method=mhim", f"method.teacher_init={teacher_init}", "method.momentum=1.0",
                          name="mhim"))
    assert mhim["test/auroc"]["mean"] > 0.9
    baseline, state = load_state(base["folds"][0]["checkpoint"]), load_state(mhim["folds"][0]["checkpoint"])
    teacher = {k[len("method.teacher."):]: v for k, v in state.items() if k.startswith("method.teacher.")}
    student = {k[len("model."):]: v for k, v in baseline.items() if k.startswith("model.")}
    assert teacher.keys() == student.keys()
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)  # momentum 1: the fold's baseline, unchanged


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_checkpoint_holds_student_and_teacher_and_resumes(make_cfg, tmp_path) -> None:
    cfg = make_cfg(*LEARN, "method=mhim_v2", "method.recycle_ratio=0.5", "method.momentum=0.9")
    summary = train(cfg)
    assert summary["test/auroc"]["mean"] > 0.7
    path = summary["folds"][0]["checkpoint"]
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert "model.head.weight" in state and "method.teacher.head.weight" in state
    assert "method.grn.global_queries" in state and "method.grn.attn.to_q.weight" in state
    assert not torch.equal(state["model.head.weight"], state["method.teacher.head.weight"])

    restored: dict[str, torch.Tensor] = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            restored.update({f"method.{k}": v.clone() for k, v in pl_module.method.state_dict().items()})
            restored["step"] = torch.tensor(trainer.global_step)

    with open_dict(cfg):
        cfg.trainer.max_epochs = ckpt["epoch"] + 2
    source = instantiate(cfg.data.source)
    splits = resolve_splits(cfg, source, 0)
    dm, module, trainer = build_run_components(cfg, source, splits[splits["fold"] == 0], tmp_path / "resumed", "fold0")
    trainer.callbacks.append(Capture())
    trainer.fit(module, datamodule=dm, ckpt_path=path)
    for key, value in state.items():
        if key.startswith("method."):
            assert torch.equal(restored[key], value), key
    assert int(restored["step"]) == ckpt["global_step"] and trainer.global_step > ckpt["global_step"]
