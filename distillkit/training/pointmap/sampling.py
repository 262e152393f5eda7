"""What a training step sees: the scene as tensors, and the image and pixel samplers with their step losses.

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

Every random draw of a step comes from `seeded_generator(seed, step)`, so a resumed run repeats the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from distillkit.images import color_jitter, normalise
from distillkit.scenes.data import SceneData
from distillkit.training.clock import StepClock, phase
from distillkit.training.pointmap.augment import View, apply_view, full_view, sample_view
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.losses import pixel_weights, pointmap_loss


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (the same in every process: ints hash to themselves)."""
    g = torch.Generator()
    g.manual_seed(hash(seeds) % (2 ** 63))
    return g


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
        if all(v == full_view(self.hw) for v in views):  # no augmentation: `apply_view` is the identity, batched
            rows = torch.as_tensor(np.asarray(idx, dtype=np.int64))
            images = self.images.index_select(0, rows).permute(0, 3, 1, 2).float()
            return {"image": images / 255.0 if self.images.dtype == torch.uint8 else images,
                    "pts": self.pts.index_select(0, rows), "conf": self.conf.index_select(0, rows),
                    "mask": self.mask.index_select(0, rows)}
        outs = [apply_view(self.images[i], self.pts[i], self.conf[i], self.mask[i], v) for i, v in zip(idx, views)]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def random_views(self, n: int, cfg: PointmapTrainConfig, gen: torch.Generator) -> list[View]:
        if tuple(cfg.crop_scale) == (1.0, 1.0) and cfg.flip_p == 0:
            return [full_view(self.hw, self.out_hw)] * n
        return [sample_view(self.hw, self.out_hw, cfg.crop_scale, cfg.flip_p, gen) for _ in range(n)]


def _jittered(x: torch.Tensor, cfg: PointmapTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The student's input images [B, 3, H, W] in [0, 1], brightness/contrast-jittered when `color_jitter`."""
    return color_jitter(x, cfg.color_jitter, gen, saturation=False) if cfg.color_jitter else x


def image_batch(scene: SceneTensors, cfg: PointmapTrainConfig, step: int, steps_per_epoch: int,
                gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Image sampler's batch `step` (of its epoch's permutation of the training frames): augmented frames, targets
    and per-pixel weights, on `device`."""
    train_idx = scene.data.train_idx
    epoch, b = divmod(step, steps_per_epoch)
    perm = train_idx[torch.randperm(len(train_idx), generator=seeded_generator(cfg.seed, -1, epoch)).numpy()]
    ids = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
    batch = scene.batch(ids, scene.random_views(len(ids), cfg, gen))
    w = pixel_weights(batch["mask"], batch["conf"], cfg.conf_weight, cfg.min_conf)
    return {"image": batch["image"].to(device, non_blocking=True), "pts": batch["pts"].to(device, non_blocking=True),
            "weight": w.to(device, non_blocking=True)}


def image_loss(model, batch: dict[str, torch.Tensor], cfg: PointmapTrainConfig, gen: torch.Generator
               ) -> torch.Tensor:
    """The student's loss on an `image_batch` (jittered on its device; CNNs take channels-last input)."""
    x = normalise(_jittered(batch["image"], cfg, gen))
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    pred = model(x).permute(0, 2, 3, 1)
    return pointmap_loss(pred, batch["pts"], batch["weight"], cfg.loss, cfg.target_scale)


def image_step_loss(model, scene: SceneTensors, cfg: PointmapTrainConfig, step: int, steps_per_epoch: int,
                    gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Image sampler: `image_loss` of `image_batch` `step`."""
    return image_loss(model, image_batch(scene, cfg, step, steps_per_epoch, gen, device), cfg, gen)


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


def pixel_step_loss(model, scene: SceneTensors, train_idx, cfg: PointmapTrainConfig, gen: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """Trainable encoder: encoder on `frames_per_step` random frames, head at `pixels_per_step` random samples."""
    pick = torch.randint(len(train_idx), (min(cfg.frames_per_step, len(train_idx)),), generator=gen).numpy()
    ids = train_idx[pick]
    batch = scene.batch(ids, scene.random_views(len(ids), cfg, gen))
    feats = model.features(normalise(_jittered(batch["image"], cfg, gen).to(device)))
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
class FeatureBuffer:
    feats: torch.Tensor  # [V * h * w, C] channels-last, on device
    fhw: tuple[int, int]
    pts: torch.Tensor  # bilinear: [V, H, W, 3]; cell: [V * h * w, 3] (target at each cell centre)
    weight: torch.Tensor  # bilinear: [V, H, W]; cell: [V * h * w]


@torch.no_grad()
def feature_buffer(model, scene: SceneTensors, cfg: PointmapTrainConfig, device: torch.device) -> FeatureBuffer:
    """Frozen encoder: features of `buffer_views` augmented views of every training frame, computed once."""
    model.eval()
    feats, pts, ws = [], [], []
    ids = [int(i) for i in scene.data.train_idx for _ in range(cfg.buffer_views)]
    gen = seeded_generator(cfg.seed, -2)
    for s in range(0, len(ids), 16):
        part = ids[s:s + 16]
        batch = scene.batch(part, scene.random_views(len(part), cfg, gen))
        f = model.features(normalise(_jittered(batch["image"], cfg, gen).to(device)))
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
    return FeatureBuffer(torch.cat(feats), fhw, torch.cat(pts), torch.cat(ws))


def buffer_step_loss(model, buf: FeatureBuffer, cfg: PointmapTrainConfig, gen: torch.Generator,
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


def epoch_steps(data: SceneData, cfg: PointmapTrainConfig) -> int:
    """Steps in one pass over the training frames (image sampler) or their valid pixels (pixel sampler)."""
    if cfg.sampler == "pixel":
        return math.ceil(int(data.mask[data.train_idx].sum()) / cfg.pixels_per_step)
    return math.ceil(len(data.train_idx) / cfg.batch_size)


def step_losses(model, scene: SceneTensors, train_idx, cfg: PointmapTrainConfig, device: torch.device,
                steps_per_epoch: int, fill_buffer: bool = True) -> Callable[..., torch.Tensor]:
    """The configured sampler as ``loss(step, generator, clock=None)`` (the image sampler times its ``data`` and
    ``forward_loss`` phases on a `StepClock`). The pixel sampler with a frozen encoder fills its
    feature buffer here (unless not `fill_buffer`: a finished run takes no step)."""
    if cfg.sampler == "pixel" and not model.encoder_trainable():
        buffer = feature_buffer(model, scene, cfg, device) if fill_buffer else None
        return lambda step, gen, clock=None: buffer_step_loss(model, buffer, cfg, gen, device)
    if cfg.sampler == "pixel":
        return lambda step, gen, clock=None: pixel_step_loss(model, scene, train_idx, cfg, gen, device)

    def image(step: int, gen: torch.Generator, clock: StepClock | None = None) -> torch.Tensor:
        with phase(clock, "data"):
            batch = image_batch(scene, cfg, step, steps_per_epoch, gen, device)
        with phase(clock, "forward_loss"):
            return image_loss(model, batch, cfg, gen)

    return image
