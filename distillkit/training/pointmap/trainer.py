"""Train a scene-specific pointmap student (seed 000): loss, exact augmentation, pixel sampler, trainer.

Entry point: `train_pointmap_student(cfg: PointmapTrainConfig, data: SceneData) -> dict`.

Augmentation (`sample_view` / `apply_view`) is exact for pixel-aligned targets: one random crop (fixed aspect),
resize to the training size and optional horizontal flip are applied identically to the image, pointmap, confidence
and mask. The image is resampled bilinearly (antialiased when shrinking); targets, confidence and mask by
**nearest** sampling, so no point is invented between two surfaces: output pixel j takes the source pixel nearest
to its continuous source location (j + 0.5) / s - 0.5 (s = output/crop size). The intrinsics are transformed
exactly for that continuous mapping (`view_K`), so the target at output pixel j projects within 0.5 * s px of j
(exactly onto j when the crop is not rescaled: s = 1). World targets are unchanged by any of this (they are
world points, not camera-frame points); a flip only changes K, which then has a negative fx (a mirror image is not
a proper pinhole view; `pose_eval` mirrors it back for PnP).

Samplers: ``image`` trains on whole augmented frames; ``pixel`` (students with a per-pixel head) trains on random
samples drawn across many frames per step, as scene-coordinate methods do. A sample is a feature cell with the
target at the pixel nearest its centre (``pixel_taps='cell'``, one head evaluation, as ACE) or any pixel with the
head run on its 4 bilinear taps (``'bilinear'``: exactly the full model's prediction there, so the loss is an
unbiased estimate of the image loss, at 4x the head cost). With a trainable encoder the encoder runs on
`frames_per_step` frames per step and the head only at `pixels_per_step` samples. With a frozen encoder
(`freeze_backbone`: MobileNet, or a CNN started from a checkpoint with `init_from`) the features of `buffer_views`
augmented views of every training frame are computed once into a buffer and each step only runs the head on random
buffer samples (ACE's training scheme).

Measured on the synthetic room (240 train / 40 test frames, 96x128, small CNN; two runs side by side, one thread
each, equal training time): from scratch, the pixel sampler (16 frames + 2048 cells per step) is *not* faster per
minute than 8-frame image batches (held-out mean L2 after 150 s: 12.4 vs 11.1 cm), because the trainable encoder
dominates the step. With a frozen encoder it is: head-only training on a buffer reaches in 20 s what 90 s of
image-batch training reaches (a trained CNN encoder: 6.5 cm after 20 s vs 6.6 cm after 90 s; it plateaus at 6.1 cm).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.scenes.data import SceneData
from distillkit.students.pointmap import build_pointmap_student, describe
from distillkit.training.pointmap.metrics import evaluate_predictions, l2_errors

log = logging.getLogger("distillkit")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CKPT_NAME = "checkpoint-last.pt"


# ------------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class View:
    """Crop box in source pixels, output size, flip."""

    top: int
    left: int
    height: int
    width: int
    out_h: int
    out_w: int
    flip: bool = False


def full_view(hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> View:
    H, W = hw
    oh, ow = out_hw or hw
    return View(0, 0, H, W, oh, ow, False)


def sample_view(hw: tuple[int, int], out_hw: tuple[int, int], crop_scale=(1.0, 1.0), flip_p: float = 0.0,
                generator: torch.Generator | None = None) -> View:
    """A random crop covering an area fraction in `crop_scale` with the frame's aspect ratio, anywhere in the frame,
    resized to `out_hw`; flipped with probability `flip_p`."""
    H, W = hw
    r = torch.rand(4, generator=generator).tolist()
    a = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * r[0]
    h = min(H, max(1, round(math.sqrt(a) * H)))
    w = min(W, max(1, round(math.sqrt(a) * W)))
    top = min(int(r[1] * (H - h + 1)), H - h)
    left = min(int(r[2] * (W - w + 1)), W - w)
    return View(top, left, h, w, out_hw[0], out_hw[1], bool(r[3] < flip_p))


def view_indices(v: View) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row / column (in the full frame) that output row / column j takes its target from: the pixel nearest
    to the continuous location (j + 0.5) * crop / out - 0.5, after the flip."""
    def nearest(n_out: int, n_in: int, offset: int) -> torch.Tensor:
        j = torch.arange(n_out, dtype=torch.float64)
        return offset + torch.floor((j + 0.5) * n_in / n_out).long().clamp(0, n_in - 1)

    rows = nearest(v.out_h, v.height, v.top)
    cols = nearest(v.out_w, v.width, v.left)
    return rows, cols.flip(0) if v.flip else cols


def view_K(K, v: View) -> np.ndarray:
    """Intrinsics of the view: crop (shift), resize (u' = (u + 0.5) s - 0.5), flip (u' = W' - 1 - u')."""
    sx, sy = v.out_w / v.width, v.out_h / v.height
    A = np.array([[sx, 0, sx * (0.5 - v.left) - 0.5], [0, sy, sy * (0.5 - v.top) - 0.5], [0, 0, 1.0]])
    if v.flip:
        A = np.array([[-1.0, 0, v.out_w - 1], [0, 1, 0], [0, 0, 1]]) @ A
    return A @ np.asarray(K, dtype=np.float64)


def apply_view(image: torch.Tensor, pts: torch.Tensor | None, conf: torch.Tensor | None, mask: torch.Tensor | None,
               v: View) -> dict[str, torch.Tensor]:
    """image uint8 [H, W, 3] -> float [3, h, w] in [0, 1] (float images are resampled as they are), bilinear;
    pts [H, W, 3], conf [H, W], mask [H, W]
    -> nearest-sampled at the same view. Identity when the view is the full frame at its own size."""
    x = image[v.top:v.top + v.height, v.left:v.left + v.width].permute(2, 0, 1).float()
    if image.dtype == torch.uint8:
        x = x / 255.0
    if (v.height, v.width) != (v.out_h, v.out_w):
        shrink = v.out_h < v.height or v.out_w < v.width
        x = F.interpolate(x[None], size=(v.out_h, v.out_w), mode="bilinear", align_corners=False,
                          antialias=shrink)[0]
        if image.dtype == torch.uint8:
            x = x.clamp(0, 1)
    if v.flip:
        x = x.flip(-1)
    out = {"image": x}
    rows, cols = view_indices(v)
    for key, t in (("pts", pts), ("conf", conf), ("mask", mask)):
        if t is not None:
            out[key] = t[rows][:, cols]
    return out


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    r = (torch.rand((x.shape[0], 2, 1, 1), generator=gen) * 2 - 1).to(x.device) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x * (1 + r[:, :1]) + (x - mean) * r[:, 1:2]).clamp(0, 1)


# ------------------------------------------------------------------------------------------------------- loss
def pixel_weights(mask: torch.Tensor, conf: torch.Tensor | None, conf_weight: bool = False,
                  min_conf: float = 0.0) -> torch.Tensor:
    """Per-pixel loss weight: validity mask, optionally x confidence and thresholded on it."""
    w = mask.float()
    if conf is not None:
        if min_conf > 0:
            w = w * (conf >= min_conf).float()
        if conf_weight:
            w = w * conf.float()
    return w


def pointmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "mse",
                  target_scale: float = 1.0) -> torch.Tensor:
    """Weighted mean over pixels of the squared error per coordinate ('mse') or the Euclidean distance ('l2'),
    with predictions and targets multiplied by `target_scale`. pred/target [..., 3] channels-last; weight [...].
    Pixels with weight 0 (invalid) never contribute, even when their target is NaN."""
    valid = weight > 0
    diff = (pred.float() - torch.where(valid[..., None], target.float(), pred.detach().float())) * target_scale
    err = diff.pow(2).mean(-1) if kind == "mse" else diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return (err * weight).sum() / weight.sum().clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------- helpers
class CosineSchedule:
    """Linear warm-up then cosine decay from lr to min_lr, driven by training *progress* in [0, 1] (the larger of
    step / total and elapsed / time budget), so a wall-clock-limited run anneals too."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, min_lr: float, warmup: float):
        self.opt, self.lr, self.min_lr, self.warmup = opt, lr, min_lr, warmup
        self.progress = 0.0
        self.update(0.0)

    def update(self, progress: float) -> float:
        self.progress = p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            lr = self.lr * max(p / self.warmup, 0.01)
        else:
            q = (p - self.warmup) / max(1 - self.warmup, 1e-12)
            lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * q))
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.update(state["progress"])


def _optimizer(model: torch.nn.Module, cfg: PointmapTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


def _gen(*seeds: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(seeds) % (2 ** 63))
    return g


def _save(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class SceneTensors:
    """A scene's arrays as CPU tensors, and batches of augmented views of them."""

    def __init__(self, data: SceneData, out_hw: tuple[int, int]):
        self.data = data
        self.hw = data.hw
        self.out_hw = out_hw
        self.images = torch.from_numpy(np.ascontiguousarray(data.images))
        self.pts = torch.from_numpy(np.ascontiguousarray(data.pts3d))
        self.conf = torch.from_numpy(np.ascontiguousarray(data.conf))
        self.mask = torch.from_numpy(np.ascontiguousarray(data.mask))

    def batch(self, idx, views: list[View]) -> dict[str, torch.Tensor]:
        outs = [apply_view(self.images[i], self.pts[i], self.conf[i], self.mask[i], v) for i, v in zip(idx, views)]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def random_views(self, n: int, cfg: PointmapTrainConfig, gen: torch.Generator) -> list[View]:
        if tuple(cfg.crop_scale) == (1.0, 1.0) and cfg.flip_p == 0:
            return [full_view(self.hw, self.out_hw)] * n
        return [sample_view(self.hw, self.out_hw, cfg.crop_scale, cfg.flip_p, gen) for _ in range(n)]


@torch.no_grad()
def predict_frames(model, scene: SceneTensors, idx, device: torch.device, batch: int = 8) -> dict[str, np.ndarray]:
    """Predictions for frames `idx` at the training resolution (full frame resized), with the targets, masks and
    intrinsics of that resolution."""
    was = model.training
    model.eval()
    preds, pts, masks, Ks = [], [], [], []
    v = full_view(scene.hw, scene.out_hw)
    for s in range(0, len(idx), batch):
        ids = list(idx[s:s + batch])
        b = scene.batch(ids, [v] * len(ids))
        preds.append(model(normalise_images(b["image"].to(device))).permute(0, 2, 3, 1).float().cpu().numpy())
        pts.append(b["pts"].numpy())
        masks.append(b["mask"].numpy())
        Ks += [view_K(scene.data.K[i], v) for i in ids]
    model.train(was)
    return {"pred": np.concatenate(preds), "target": np.concatenate(pts), "mask": np.concatenate(masks),
            "K": np.stack(Ks)}


def evaluate_scene(model, scene: SceneTensors, cfg: PointmapTrainConfig, device: torch.device, pose: bool = True,
                   train_frames: int = 16) -> dict:
    """Held-out metrics (mean L2, and PnP pose metrics when the scene has reference poses), plus the mean L2 on a
    few training frames (overfitting check)."""
    data = scene.data
    test = data.test_idx
    out: dict[str, Any] = {}
    if len(test):
        p = predict_frames(model, scene, test, device)
        ref, ref_kind = data.eval_poses
        use_pose = pose and cfg.eval_pose and ref is not None
        res = evaluate_predictions(p["pred"], p["target"], p["mask"], p["K"], ref[test] if use_pose else None,
                                   cfg.metres_per_unit, cfg.pnp_reproj_px, cfg.pnp_iterations,
                                   extent=data.extent())
        out.update(res)
        if use_pose:
            out["pose_reference"] = ref_kind
    tr = data.train_idx[np.linspace(0, len(data.train_idx) - 1, min(train_frames, len(data.train_idx))).astype(int)]
    p = predict_frames(model, scene, tr, device)
    out["train_mean_l2"] = float(np.nanmean(l2_errors(p["pred"], p["target"], p["mask"])))
    return out


def load_pointmap_student(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, its PointmapTrainConfig, its spec: scene, image_hw (the training resolution), student,
    sampler) from a checkpoint written by `train_pointmap_student`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint (expected <out_dir>/<scene>/{CKPT_NAME})")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "spec" not in ck or "model" not in ck:
        raise ValueError(f"{path}: not a pointmap-student checkpoint (no 'spec'/'model'; a DUNE checkpoint?)")
    cfg = PointmapTrainConfig.model_validate(ck["config"])
    student = cfg.student.model_copy(update={"pretrained": None})  # the weights come from the checkpoint
    model = build_pointmap_student(student, tuple(ck["spec"]["image_hw"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg, ck["spec"]


def plot_pointmap_curve(metrics: dict, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = metrics.get("train", [])
    if tr:
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=1.0, label="train loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metrics.get('config', {}).get('loss', 'mse')} loss (targets x "
                  f"{metrics.get('config', {}).get('target_scale', 1.0):g})")
    ev = [e for e in metrics.get("eval", []) if "mean_l2" in e]
    if ev:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in ev], [e["mean_l2"] for e in ev], "o-", color="C3", ms=3, label="held-out mean L2")
        ax2.set_ylabel("held-out mean L2 (world units)")
        ax2.set_yscale("log")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "pointmap student")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ trainer
def train_pointmap_student(cfg: PointmapTrainConfig, data: SceneData,
                           on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train (or resume) a scene-specific student on `data`'s training frames; evaluate on its test frames.

    Writes ``out_dir/checkpoint-last.pt`` (model, optimiser, scheduler, step/epoch, metrics, RNG, config),
    ``metrics.json`` and ``loss_curve.png``. Returns paths, timings, model size and the final held-out metrics
    (mean L2 in world units and / extent; with reference poses, % of frames within 5 cm/5 deg and 10 cm/10 deg and
    median errors)."""
    from distillkit.teachers import resolve_device

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_hw = tuple(cfg.image_size or data.hw)
    if cfg.student.kind == "vit" and (out_hw[0] % cfg.student.patch_size or out_hw[1] % cfg.student.patch_size):
        raise ValueError(f"ViT patch {cfg.student.patch_size} does not divide the image size {out_hw}: set "
                         f"image_size to a multiple of it")
    scene = SceneTensors(data, out_hw)
    train_idx = data.train_idx
    model = build_pointmap_student(cfg.student, out_hw)
    centre, scale = data.target_stats()
    model.set_scene(centre, scale)
    if cfg.init_from and not (cfg.resume and (out / CKPT_NAME).exists()):
        own = model.state_dict()
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=False)["model"]
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
        log.info("initialised %d/%d tensors from %s", len(usable), len(own), cfg.init_from)
        centre, scale = model.centre.numpy().astype(np.float64), float(model.scale)  # the head was trained on these
    model.to(device)
    pixel = cfg.sampler == "pixel"
    buffered = pixel and not model.encoder_trainable()
    n_train_px = int(data.mask[train_idx].sum())
    steps_per_epoch = math.ceil(n_train_px / cfg.pixels_per_step) if pixel else math.ceil(len(train_idx) /
                                                                                          cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    opt = _optimizer(model, cfg)
    sched = CosineSchedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction)
    spec = {"student": cfg.student.relevant(), "image_hw": list(out_hw), "scene": data.name, "sampler": cfg.sampler}
    metrics: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "data": data.summary(), "model": describe(model),
                               "spec": spec, "train": [], "eval": []}
    step, train_s = 0, 0.0
    ckpt_path = out / CKPT_NAME
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["spec"] != spec:
            raise ValueError(f"{ckpt_path} was written for {ck['spec']}; this run is {spec}. Use a new out_dir.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, train_s, metrics = ck["step"], ck["train_s"], ck["metrics"]
        torch.set_rng_state(ck["rng"]["torch"])
        log.info("resumed %s at step %d", ckpt_path, step)

    def checkpoint() -> None:
        _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": step, "epoch": step / steps_per_epoch,
                          "train_s": train_s, "metrics": metrics, "spec": spec, "config": cfg.model_dump(mode="json"),
                          "rng": {"torch": torch.get_rng_state()}, "scene_centre": centre.tolist(),
                          "scene_scale": scale})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    buffer = None
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    if buffered and step < total:
        buffer = _feature_buffer(model, scene, cfg, device)
    train_s += time.perf_counter() - t_start
    eval_s = 0.0
    next_eval = (cfg.eval_every * steps_per_epoch) if cfg.eval_every else math.inf
    next_eval_s = cfg.eval_every_s or math.inf
    if metrics["eval"]:
        next_eval = metrics["eval"][-1]["step"] + cfg.eval_every * steps_per_epoch if cfg.eval_every else math.inf
        next_eval_s = metrics["eval"][-1]["train_s"] + (cfg.eval_every_s or math.inf)
    model.train()
    stop = False
    while step < total and not stop:
        t0 = time.perf_counter()
        gen = _gen(cfg.seed, step)
        if buffer is not None:
            loss = _buffer_step_loss(model, buffer, cfg, gen, device)
        elif pixel:
            loss = _pixel_step_loss(model, scene, train_idx, cfg, gen, device)
        else:
            epoch, b = divmod(step, steps_per_epoch)
            perm = train_idx[torch.randperm(len(train_idx), generator=_gen(cfg.seed, -1, epoch)).numpy()]
            ids = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            batch = scene.batch(ids, scene.random_views(len(ids), cfg, gen))
            x = batch["image"]
            if cfg.color_jitter:
                x = _jitter(x, cfg.color_jitter, gen)
            pred = model(normalise_images(x.to(device))).permute(0, 2, 3, 1)
            w = pixel_weights(batch["mask"], batch["conf"], cfg.conf_weight, cfg.min_conf).to(device)
            loss = pointmap_loss(pred, batch["pts"].to(device), w, cfg.loss, cfg.target_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        step += 1
        train_s += time.perf_counter() - t0
        lr = sched.update(max(step / total, train_s / budget_s if budget_s else 0.0))
        rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": float(loss.detach()), "lr": lr,
               "train_s": round(train_s, 3)}
        metrics["train"].append(rec)
        if on_step:
            on_step(step, total, rec)
        if budget_s and train_s >= budget_s:
            stop = True
        if (step >= next_eval or train_s >= next_eval_s) and step < total and not stop:
            t1 = time.perf_counter()
            ev = evaluate_scene(model, scene, cfg, device, pose=False)
            metrics["eval"].append({"step": step, "epoch": rec["epoch"], "train_s": round(train_s, 3),
                                    **{k: v for k, v in ev.items() if not k.startswith("per_frame")}})
            eval_s += time.perf_counter() - t1
            while next_eval <= step:
                next_eval += cfg.eval_every * steps_per_epoch if cfg.eval_every else math.inf
            while next_eval_s <= train_s:
                next_eval_s += cfg.eval_every_s or math.inf
        if step % cfg.ckpt_every == 0 and step < total and not stop:
            checkpoint()
    t1 = time.perf_counter()
    final = evaluate_scene(model, scene, cfg, device, pose=True)
    eval_s += time.perf_counter() - t1
    summary = {k: v for k, v in final.items() if not k.startswith("per_frame")}
    if not metrics["eval"] or metrics["eval"][-1]["step"] != step:
        metrics["eval"].append({"step": step, "epoch": round(step / steps_per_epoch, 4), "train_s": round(train_s, 3),
                                **summary})
    metrics["final"] = final
    metrics["train_s"] = train_s
    metrics["process_cpu_s"] = time.process_time() - cpu0  # this call's CPU time (all threads), eval included
    metrics["steps"] = step
    checkpoint()
    png = plot_pointmap_curve(metrics, out / "loss_curve.png",
                              f"{data.name}: {cfg.student.kind} ({cfg.sampler} sampler)")
    losses = [r["loss"] for r in metrics["train"]]
    return {"checkpoint": str(ckpt_path), "metrics": str(out / "metrics.json"), "loss_curve": str(png),
            "steps": step, "epochs": round(step / steps_per_epoch, 3), "train_s": train_s, "eval_s": eval_s,
            "process_cpu_s": metrics["process_cpu_s"],
            "model": metrics["model"], "scene": data.name, "extent": data.extent(), "final_eval": summary,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "device": str(device)}


# ------------------------------------------------------------------------------------------------ pixel sampler
def _sample_pixels(weight: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n flat indices drawn uniformly (with replacement) among entries of positive weight."""
    valid = torch.nonzero(weight.reshape(-1) > 0).squeeze(1)
    if len(valid) == 0:
        raise ValueError("no valid target pixel in the sampled frames")
    return valid[torch.randint(len(valid), (n,), generator=gen)]


def cell_centres(hw: tuple[int, int], fhw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel nearest to each feature cell's centre ((i + 0.5) H / h - 0.5, ties up): where `forward`'s bilinear
    upsampling puts (almost exactly) that cell's own prediction."""
    def one(n_out, n_in):
        return torch.floor((torch.arange(n_in, dtype=torch.float64) + 0.5) * n_out / n_in).long().clamp(0, n_out - 1)

    return one(hw[0], fhw[0]), one(hw[1], fhw[1])


def _cells(feats_flat: torch.Tensor, fhw, pts: torch.Tensor, weight: torch.Tensor):
    """Per feature cell of frames [B, H, W]: (features [B*h*w, C], target at the cell centre [B*h*w, 3], weight)."""
    cy, cx = cell_centres(tuple(weight.shape[-2:]), fhw)
    return feats_flat, pts[:, cy][:, :, cx].reshape(-1, 3), weight[:, cy][:, :, cx].reshape(-1)


def _pixel_step_loss(model, scene: SceneTensors, train_idx, cfg: PointmapTrainConfig, gen: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """Trainable encoder: encoder on `frames_per_step` random frames, head at `pixels_per_step` random samples."""
    pick = torch.randint(len(train_idx), (min(cfg.frames_per_step, len(train_idx)),), generator=gen).numpy()
    ids = train_idx[pick]
    batch = scene.batch(ids, scene.random_views(len(ids), cfg, gen))
    x = batch["image"]
    if cfg.color_jitter:
        x = _jitter(x, cfg.color_jitter, gen)
    feats = model.features(normalise_images(x.to(device)))
    w = pixel_weights(batch["mask"], batch["conf"], cfg.conf_weight, cfg.min_conf)
    if cfg.pixel_taps == "cell":
        f, tgt, wc = _cells(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]), tuple(feats.shape[-2:]),
                            batch["pts"], w)
        idx = _sample_pixels(wc, cfg.pixels_per_step, gen)
        pred = model.to_world(model.head_points(f[idx.to(device)]))
        return pointmap_loss(pred, tgt[idx].to(device), wc[idx].to(device), cfg.loss, cfg.target_scale)
    flat = _sample_pixels(w, cfg.pixels_per_step, gen)
    H, W = scene.out_hw
    b, rem = flat // (H * W), flat % (H * W)
    y, xx = rem // W, rem % W
    pred = model.predict_at(feats, b.to(device), y.to(device), xx.to(device), (H, W))
    tgt = batch["pts"].reshape(-1, 3)[flat].to(device)
    return pointmap_loss(pred, tgt, w.reshape(-1)[flat].to(device), cfg.loss, cfg.target_scale)


@dataclass
class _Buffer:
    feats: torch.Tensor  # [V * h * w, C] channels-last, on device
    fhw: tuple[int, int]
    pts: torch.Tensor  # bilinear: [V, H, W, 3]; cell: [V * h * w, 3] (target at each cell centre)
    weight: torch.Tensor  # bilinear: [V, H, W]; cell: [V * h * w]


@torch.no_grad()
def _feature_buffer(model, scene: SceneTensors, cfg: PointmapTrainConfig, device: torch.device) -> _Buffer:
    """Frozen encoder: features of `buffer_views` augmented views of every training frame, computed once."""
    model.eval()
    feats, pts, ws = [], [], []
    ids = [int(i) for i in scene.data.train_idx for _ in range(cfg.buffer_views)]
    gen = _gen(cfg.seed, -2)
    for s in range(0, len(ids), 16):
        part = ids[s:s + 16]
        batch = scene.batch(part, scene.random_views(len(part), cfg, gen))
        x = batch["image"]
        if cfg.color_jitter:
            x = _jitter(x, cfg.color_jitter, gen)
        f = model.features(normalise_images(x.to(device)))
        fhw = tuple(f.shape[-2:])
        f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        w = pixel_weights(batch["mask"], batch["conf"], cfg.conf_weight, cfg.min_conf)
        if cfg.pixel_taps == "cell":
            f, p, w = _cells(f, fhw, batch["pts"], w)
            pts.append(p.to(device))
        else:
            pts.append(batch["pts"])
        feats.append(f)
        ws.append(w)
    model.train()
    return _Buffer(torch.cat(feats), fhw, torch.cat(pts), torch.cat(ws))


def _buffer_step_loss(model, buf: _Buffer, cfg: PointmapTrainConfig, gen: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    flat = _sample_pixels(buf.weight, cfg.pixels_per_step, gen)
    if cfg.pixel_taps == "cell":
        d = flat.to(device)
        pred = model.to_world(model.head_points(buf.feats[d]))
        return pointmap_loss(pred, buf.pts[d], buf.weight[flat].to(device), cfg.loss, cfg.target_scale)
    _, H, W = buf.weight.shape
    b, rem = flat // (H * W), flat % (H * W)
    y, x = rem // W, rem % W
    pred = model.predict_flat(buf.feats, buf.fhw, b.to(device), y.to(device), x.to(device), (H, W))
    return pointmap_loss(pred, buf.pts.reshape(-1, 3)[flat].to(device), buf.weight.reshape(-1)[flat].to(device),
                         cfg.loss, cfg.target_scale)


# ------------------------------------------------------------------------------------------------------ ablations
def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def expand_ablation(base: dict, grid: dict[str, list], runs: list[dict], out_dir: str) -> list[dict]:
    """The runs of an ablation: the cartesian product of `grid` (dotted keys) over `base`, then the explicit `runs`.
    Runs whose *effective* configuration is the same (e.g. a ViT hyper-parameter varied for a CNN) are kept once.
    Each entry: {"run": id, "label": "k=v ...", "overrides": {...}, "config": PointmapTrainConfig fields}."""
    import copy
    import itertools

    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else []
    combos += [dict(r) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for ov in combos:
        d = copy.deepcopy(base)
        d.setdefault("out_dir", out_dir)
        for k, v in ov.items():
            _set_dotted(d, k, v)
        cfg = PointmapTrainConfig.model_validate(d)
        key = json.dumps({**cfg.model_dump(mode="json", exclude={"out_dir", "student"}),
                          "student": cfg.student.relevant()}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen[key] = len(out)
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in ov.items()) or "base"
        slug = "".join(c if c.isalnum() or c in "-_=." else "_" for c in label.replace(" ", "_"))[:80]
        run_id = f"r{len(out):02d}-{slug}"
        d["out_dir"] = str(Path(out_dir) / run_id)
        out.append({"run": run_id, "label": label, "overrides": ov, "config": d})
    return out


ABLATION_COLUMNS = ("run", "label", "scene", "kind", "size_mb", "steps", "epochs", "train_s", "mean_l2",
                    "mean_l2_over_extent", "train_mean_l2", "pct_5cm_5deg", "pct_10cm_10deg", "median_t_cm",
                    "median_r_deg", "first_loss", "last_loss", "metrics")


def ablation_row(run: dict, result: dict) -> dict:
    ev = result["final_eval"]
    row = {"run": run["run"], "label": run["label"], "scene": result["scene"],
           "kind": run["config"].get("student", {}).get("kind") or PointmapTrainConfig.model_validate(
               run["config"]).student.kind,
           "size_mb": result["model"]["size_mb"], "steps": result["steps"], "epochs": result["epochs"],
           "train_s": round(result["train_s"], 2), "first_loss": result["first_loss"],
           "last_loss": result["last_loss"], "metrics": result["metrics"]}
    for k in ABLATION_COLUMNS:
        if k not in row:
            v = ev.get(k)
            row[k] = round(v, 6) if isinstance(v, float) else v
    return row


def write_ablation_csv(rows: list[dict], path: str | Path) -> Path:
    import csv

    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ABLATION_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in ABLATION_COLUMNS})
    return path


def plot_ablation(rows: list[dict], path: str | Path) -> Path:
    """Left: training loss vs epoch of every run (one line per run and scene). Right: held-out mean L2 per scene,
    one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    for r in rows:
        try:
            m = json.loads(Path(r["metrics"]).read_text())
        except (OSError, ValueError):
            continue
        tr = m.get("train", [])
        a1.plot([t["epoch"] for t in tr], [t["loss"] for t in tr], lw=0.9, color=f"C{runs.index(r['run']) % 10}",
                ls=["-", "--", ":", "-."][scenes.index(r["scene"]) % 4],
                label=f"{r['label']} / {r['scene']}")
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=6)
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        vals = [next((r["mean_l2"] for r in rows if r["run"] == run and r["scene"] == s), np.nan) for s in scenes]
        lab = next(r["label"] for r in rows if r["run"] == run)
        a2.bar(np.arange(len(scenes)) + i * width, vals, width, label=lab, color=f"C{i % 10}")
    a2.set_xticks(np.arange(len(scenes)) + 0.4 - width / 2, scenes, fontsize=8)
    a2.set_ylabel("held-out mean L2 (world units)")
    a2.set_yscale("log")
    a2.grid(alpha=0.3, axis="y")
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
