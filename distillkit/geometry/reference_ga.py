"""Minimal faithful re-implementation of DUSt3R's ``PointCloudOptimizer`` loop (the official method), for
side-by-side timing and accuracy checks against our solver.  Written from the spec in
``shared/notes/dust3r.md`` section 3; no official code.

Same parametrisation (float32): per image a log-depth map, a pose as unit quaternion (x, y, z, w) +
``signed_log1p`` translation, a focal stored as ``20 * log f``, principal point fixed at the centre;
per edge a quaternion, ``signed_log1p`` of ``T / s`` and a log-scale, the scales renormalised at every
evaluation to geometric mean ``base_scale`` (unless two or more poses are known).  Same loss
(``log(conf)``-weighted un-squared distances, each side divided by ``sum_e H*W``), same optimiser
(Adam, betas 0.9/0.9) and schedule (``lr_min + (lr - lr_min) * (1 + cos(pi t / niter)) / 2``, or
linear).  The initial state is supplied by the caller (we use our spanning-tree init, PnP-free:
the official optimum does not depend on it).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from distillkit.geometry.predictions import PairPredictions


def _signed_log1p(x):
    return torch.sign(x) * torch.log1p(torch.abs(x))


def _signed_expm1(x):
    return torch.sign(x) * torch.expm1(torch.abs(x))


def rotmat_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[..., 4]`` (x, y, z, w; w >= 0) of rotation matrices ``[..., 3, 3]``."""
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    out = np.empty((len(flat), 4))
    for n, m in enumerate(flat):
        tr = np.trace(m)
        cand = np.array([1 + 2 * m[0, 0] - tr, 1 + 2 * m[1, 1] - tr, 1 + 2 * m[2, 2] - tr, 1 + tr])
        a = int(np.argmax(cand))
        q = np.empty(4)
        q[a] = math.sqrt(max(cand[a], 1e-300)) / 2
        if a == 3:
            q[0] = (m[2, 1] - m[1, 2]) / (4 * q[3])
            q[1] = (m[0, 2] - m[2, 0]) / (4 * q[3])
            q[2] = (m[1, 0] - m[0, 1]) / (4 * q[3])
        else:
            b, c = (a + 1) % 3, (a + 2) % 3
            q[b] = (m[b, a] + m[a, b]) / (4 * q[a])
            q[c] = (m[c, a] + m[a, c]) / (4 * q[a])
            q[3] = (m[c, b] - m[b, c]) / (4 * q[a])
        out[n] = q if q[3] >= 0 else -q
    return out.reshape(R.shape[:-2] + (4,))


def quat_xyzw_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack((
        torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)), -1),
        torch.stack((2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)), -1),
        torch.stack((2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)), -1)), -2)


class ReferenceGA(torch.nn.Module):
    """The official parametrisation and loss; ``forward()`` returns the loss."""

    focal_break = 20.0

    def __init__(self, preds: PairPredictions, base_scale: float = 0.5, known_poses: bool = False):
        super().__init__()
        H, W = preds.hw
        n, E = preds.n_images, preds.n_edges
        self.H, self.W, self.n = H, W, n
        self.base_scale = base_scale
        self.norm_pw_scale = not known_poses
        self.register_buffer("ei", torch.as_tensor(preds.edges[:, 0]))
        self.register_buffer("ej", torch.as_tensor(preds.edges[:, 1]))
        self.register_buffer("pred_i", torch.as_tensor(np.asarray(preds.pts1, np.float32)).reshape(E, H * W, 3))
        self.register_buffer("pred_j", torch.as_tensor(np.asarray(preds.pts2, np.float32)).reshape(E, H * W, 3))
        self.register_buffer("weight_i", torch.as_tensor(np.asarray(preds.conf1, np.float32)).reshape(E, H * W).log())
        self.register_buffer("weight_j", torch.as_tensor(np.asarray(preds.conf2, np.float32)).reshape(E, H * W).log())
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        self.register_buffer("grid", torch.stack((u, v), -1).reshape(H * W, 2))
        self.register_buffer("pp", torch.tensor([W / 2, H / 2], dtype=torch.float32))
        self.total_area = float(E * H * W)
        self.im_depthmaps = torch.nn.Parameter(torch.zeros(n, H * W))
        self.im_poses = torch.nn.Parameter(torch.zeros(n, 7))
        self.im_focals = torch.nn.Parameter(torch.zeros(n, 1))
        self.pw_poses = torch.nn.Parameter(torch.zeros(E, 8))

    @torch.no_grad()
    def set_state(self, cam2world, focals, depth, pw_R, pw_T, pw_s):
        """Write an initial state (numpy, float64 ok): ``depth [n, H*W]``, pair similarity ``s R X + T``."""
        f32 = dict(dtype=torch.float32)
        c2w = np.asarray(cam2world)
        self.im_poses[:, :4] = torch.as_tensor(rotmat_to_quat_xyzw(c2w[:, :3, :3]), **f32)
        self.im_poses[:, 4:7] = _signed_log1p(torch.as_tensor(c2w[:, :3, 3], **f32))
        self.im_focals[:, 0] = self.focal_break * torch.as_tensor(np.log(np.asarray(focals, np.float64)), **f32)
        self.im_depthmaps[:] = torch.as_tensor(np.log(np.asarray(depth, np.float64)), **f32)
        s = np.asarray(pw_s, np.float64)
        self.pw_poses[:, :4] = torch.as_tensor(rotmat_to_quat_xyzw(pw_R), **f32)
        self.pw_poses[:, 4:7] = _signed_log1p(torch.as_tensor(np.asarray(pw_T) / s[:, None], **f32))
        self.pw_poses[:, 7] = torch.as_tensor(np.log(s), **f32)

    def pw_scale(self):
        sig = self.pw_poses[:, 7]
        if self.norm_pw_scale:
            sig = sig + (math.log(self.base_scale) - sig.mean())
        return sig.exp()

    def cam2world(self):
        T = torch.eye(4).repeat(self.n, 1, 1)
        T[:, :3, :3] = quat_xyzw_to_rotmat(self.im_poses[:, :4])
        T[:, :3, 3] = _signed_expm1(self.im_poses[:, 4:7])
        return T

    def focals(self):
        return (self.im_focals[:, 0] / self.focal_break).exp()

    def depth(self):
        return self.im_depthmaps.exp()

    def pts3d(self):
        d = self.depth()[..., None]
        f = self.focals()[:, None, None]
        cam = torch.cat((d * (self.grid - self.pp) / f, d), -1)  # [n, HW, 3]
        R = quat_xyzw_to_rotmat(self.im_poses[:, :4])
        return cam @ R.transpose(1, 2) + _signed_expm1(self.im_poses[:, 4:7])[:, None, :]

    def pw_transforms(self):
        R = quat_xyzw_to_rotmat(self.pw_poses[:, :4])
        s = self.pw_scale()[:, None]
        return s[..., None] * R, s * _signed_expm1(self.pw_poses[:, 4:7])  # both rows scaled, as officially

    def forward(self):
        sR, T = self.pw_transforms()
        pts = self.pts3d()
        ai = self.pred_i @ sR.transpose(1, 2) + T[:, None, :]
        aj = self.pred_j @ sR.transpose(1, 2) + T[:, None, :]
        li = ((pts[self.ei] - ai).norm(dim=-1) * self.weight_i).sum() / self.total_area
        lj = ((pts[self.ej] - aj).norm(dim=-1) * self.weight_j).sum() / self.total_area
        return li + lj


def lr_at(t: int, niter: int, lr: float, lr_min: float, schedule: str) -> float:
    x = t / niter
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * x)) / 2
    if schedule == "linear":
        return lr + (lr_min - lr) * x
    raise ValueError(f"bad schedule {schedule!r}")


def run_reference(model: ReferenceGA, niter: int = 300, lr: float = 0.01, lr_min: float = 1e-6,
                  schedule: str = "cosine", optimize_poses: bool = True, optimize_focals: bool = True) -> dict:
    """The official loop: Adam(betas 0.9/0.9), learning rate set every iteration by the schedule."""
    params = [model.im_depthmaps, model.pw_poses]
    if optimize_poses:
        params.append(model.im_poses)
    if optimize_focals:
        params.append(model.im_focals)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    losses = []
    t0 = time.perf_counter()
    for t in range(niter):
        for g in opt.param_groups:
            g["lr"] = lr_at(t, niter, lr, lr_min, schedule)
        opt.zero_grad()
        loss = model()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    loop_s = time.perf_counter() - t0
    with torch.no_grad():
        final = float(model())
        out = {"loss_curve": np.array(losses), "final_loss": final, "loop_s": loop_s, "iterations": niter,
               "pts3d": model.pts3d().reshape(model.n, model.H, model.W, 3).numpy(),
               "depth": model.depth().reshape(model.n, model.H, model.W).numpy(),
               "cam2world": model.cam2world().numpy(), "focals": model.focals().numpy()}
    return out
