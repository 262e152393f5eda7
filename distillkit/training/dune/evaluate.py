"""A DUNE student against its targets: per-teacher losses of a batch, held-out metrics, and the student rebuilt from
its checkpoint (`load_dune_student`, the task's checkpoint loader)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from distillkit_schemas import paths

from distillkit.images import images_to_input
from distillkit.store.reader import ShardStream, make_loader
from distillkit.students.dune import StudentConfig, build_student
from distillkit.training.checkpoint import load_checkpoint
from distillkit.training.dune.losses import cosine, teacher_loss
from distillkit.training.dune.normalize import TargetNorm


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's images and target arrays on `device` (non-blocking: from pinned memory the copy overlaps)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "rows" else v
            for k, v in batch.items()}


def targets(batch: dict, norm: TargetNorm, device: torch.device, has_cls: dict[str, bool]
            ) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """Per teacher in the batch: normalised (CLS or None, patch) targets, compact codes decoded on `device`."""
    out = {}
    for t in has_cls:
        if paths.patch(t) in batch:
            out[t] = (norm(t, "cls", batch[paths.cls(t)].to(device)) if has_cls[t] else None,
                      norm(t, "patch", batch[paths.patch(t)].to(device)))
    return out


def student_losses(model, images: torch.Tensor, tgt: dict, device: torch.device, jitter: float = 0.0):
    """Per teacher of `tgt`: (per-image loss [B], student CLS, student patches); bf16 autocast on a GPU through the
    encoder and projectors (the loss itself is computed in float32)."""
    x = images_to_input(images, device, jitter)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        preds = model(x)
    return {t: (teacher_loss(cls_s if tgt[t][0] is not None else None, patch_s, *tgt[t]), cls_s, patch_s)
            for t, (cls_s, patch_s) in preds.items() if t in tgt}


def batch_losses(model, batch: dict, norm: TargetNorm, device: torch.device, has_cls: dict[str, bool],
                 jitter: float = 0.0):
    """Per teacher: (per-image loss [B], student CLS, student patches), against normalised targets."""
    return student_losses(model, batch["samples/image"], targets(batch, norm, device, has_cls), device, jitter)


@torch.no_grad()
def evaluate(model, streams: list[tuple[ShardStream, list[str]]], norm: TargetNorm, device: torch.device,
             has_cls: dict[str, bool]) -> dict[str, dict[str, float]]:
    """Per teacher: distillation loss and cosine similarity to the raw teacher features, on held-out samples."""
    model.eval()
    acc: dict[str, dict[str, float]] = {}
    for stream, teachers in streams:
        for batch in make_loader(stream, 0):
            res = batch_losses(model, batch, norm, device, has_cls)
            b = len(batch["ids"])
            for t, (loss, cls_s, patch_s) in res.items():
                if t not in teachers:
                    continue
                a = acc.setdefault(t, {"loss": 0.0, "cos_patch": 0.0, "cos_cls": 0.0, "samples": 0})
                a["samples"] += b
                a["loss"] += float(loss.sum())
                raw_patch = norm.raw(t, "patch", batch[paths.patch(t)].to(device))
                a["cos_patch"] += float(cosine(norm.invert(t, "patch", patch_s), raw_patch).flatten(1).mean(1).sum())
                if has_cls[t]:
                    raw_cls = norm.raw(t, "cls", batch[paths.cls(t)].to(device))
                    a["cos_cls"] += float(cosine(norm.invert(t, "cls", cls_s), raw_cls).sum())
    model.train()
    return {t: {k: (v / a["samples"] if k != "samples" else v) for k, v in a.items() if k != "cos_cls" or has_cls[t]}
            for t, a in acc.items()}


def load_dune_student(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(the student a DUNE checkpoint holds, weights loaded, in eval mode on `device`; the checkpoint, whose
    ``normalization`` and ``teacher_dims`` say which targets its projectors predict)."""
    ck = load_checkpoint(checkpoint, "dune")
    dims = {t: (d[0], tuple(d[1])) for t, d in ck["teacher_dims"].items()}
    model = build_student(StudentConfig(**ck["student"]), tuple(ck["image_hw"]), ck["patch_size"], dims,
                          ck["projector"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
