"""Joint second-order solver for the global-alignment objective on a ``Problem`` (all unknowns at once).

Objective (the official one): ``L = sum_{e, side, p} w * ||P(p) - A_e(p)|| / (E * S)``, un-squared
Euclidean distances, ``w = log(conf)``.  Each iteration builds a Gauss-Newton model of ``L`` in which the
norm's curvature is ``w/||r|| * (I - beta * rr^T/||r||^2)`` (``beta = 0``: the IRLS / Weiszfeld
majoriser; ``beta = 1``: the exact Hessian of the norm; in between: a blend), linearises the world
points and aligned points in

* per pixel: log-depth (1 unknown per sampled pixel),
* per camera: rotation increment (3), centre (3), log-focal (1) -- fixed ones are dropped,
* per edge: rotation increment (3), translation (3), log-scale (1),

eliminates the per-pixel depths exactly with a Schur complement (each depth couples only with its
camera and the edges that observe its image, so the reduced system has ``7 * (cameras + edges)``
unknowns whatever the pixel count), solves the reduced system by Cholesky with Levenberg-Marquardt
damping, and back-substitutes the depths.  The official scale gauge (geometric mean of the pair
scales fixed) is a linear constraint on the log-scales, enforced exactly by projecting the reduced
system onto its null space; the rigid gauge is fixed by holding one camera pose (or the known poses).
Work and memory per iteration are ``O(sum_images K_n * S * 14^2 + S * (7 + 7 K_n)^2)`` for ``K_n``
observations of image ``n``, processed one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import F64, so3_exp
from .problem import Problem, State, weighted_loss


@dataclass
class SolverOptions:
    max_iters: int = 40
    beta: float = 0.5  # fraction of the radial curvature of the norm kept in the model (see module doc)
    lm_init: float = 1e-5
    tol: float = 1e-10  # stop when the relative loss decrease stays below this
    step_tol: float = 1e-9  # ... or when the step is this small (radians / relative)


@dataclass
class Freedom:
    pose_free: torch.Tensor  # [n] bool
    focal_free: torch.Tensor  # [n] bool
    norm_scale: bool  # geometric mean of the pair scales fixed


def _index_map(prob: Problem, fr: Freedom):
    n, E = prob.n, prob.E
    cam = torch.full((n, 7), -1, dtype=torch.long)
    cur = 0
    for k in range(n):
        if fr.pose_free[k]:
            cam[k, :6] = torch.arange(cur, cur + 6)
            cur += 6
        if fr.focal_free[k]:
            cam[k, 6] = cur
            cur += 1
    pair = torch.arange(cur, cur + 7 * E).reshape(E, 7)
    N = cur + 7 * E
    cam[cam < 0] = N  # dummy slot, discarded
    return cam, pair, N


def _linearise(prob: Problem, st: State, k: int, beta: float, eps: float):
    """Per-image blocks of the model: direct blocks, Schur rows, pixel diagonal and gradients."""
    eids, X, w = prob.obs[k]
    K, S = X.shape[:2]
    x = st.cam_points(prob, k)
    jl = x @ st.R[k].T  # dP/dlogd = R x  [S, 3]
    P = jl + st.t[k]
    Y = st.sig[eids].exp()[:, None, None] * (X @ st.Rp[eids].transpose(1, 2))  # [K, S, 3]
    r = P[None] - (Y + st.Tp[eids][:, None, :])
    nr = r.norm(dim=-1).clamp_min(eps)
    rh = r / nr[..., None]
    om = w / nr

    G = torch.zeros(K, S, 3, 14, dtype=F64)
    # camera columns: d P / d(rot, centre, logf)
    G[:, :, 0, 1], G[:, :, 0, 2] = jl[:, 2], -jl[:, 1]
    G[:, :, 1, 0], G[:, :, 1, 2] = -jl[:, 2], jl[:, 0]
    G[:, :, 2, 0], G[:, :, 2, 1] = jl[:, 1], -jl[:, 0]
    G[:, :, 0, 3] = G[:, :, 1, 4] = G[:, :, 2, 5] = 1.0
    G[:, :, :, 6] = -(x[:, :1] * st.R[k][:, 0] + x[:, 1:2] * st.R[k][:, 1])
    # edge columns: -d A / d(rot, translation, logscale)
    G[..., 0, 8], G[..., 0, 9] = -Y[..., 2], Y[..., 1]
    G[..., 1, 7], G[..., 1, 9] = Y[..., 2], -Y[..., 0]
    G[..., 2, 7], G[..., 2, 8] = -Y[..., 1], Y[..., 0]
    G[..., 0, 10] = G[..., 1, 11] = G[..., 2, 12] = -1.0
    G[..., :, 13] = -Y

    Gf = G.reshape(K, 3 * S, 14)
    Gw = (G * om[..., None, None]).reshape(K, 3 * S, 14)
    Gr = (G * rh[..., None]).sum(2)  # [K, S, 14]
    M = Gw.transpose(1, 2) @ Gf - beta * ((Gr * om[..., None]).transpose(1, 2) @ Gr)
    jG = (jl[None, :, :, None] * G).sum(2)  # [K, S, 14]
    jr = (jl[None] * rh).sum(-1)  # [K, S]
    bk = om[..., None] * (jG - beta * jr[..., None] * Gr)
    h = (om * ((jl * jl).sum(-1)[None] - beta * jr * jr)).sum(0)
    gG = (w[..., None] * Gr).sum(1)  # [K, 14]
    gl = (w * jr).sum(0)
    B = torch.cat((bk[..., :7].sum(0), bk[..., 7:].permute(1, 0, 2).reshape(S, 7 * K)), 1)
    return M, gG, B, h, gl


def _update(st: State, prob: Problem, cam, pair, N, dy, dl) -> State:
    new = st.clone()
    d = torch.cat((dy, dy.new_zeros(1)))  # dummy slot -> 0
    dc = d[cam]
    new.R = so3_exp(dc[:, :3]) @ st.R
    new.t = st.t + dc[:, 3:6]
    new.logf = st.logf + dc[:, 6]
    dp = d[pair]
    new.Rp = so3_exp(dp[:, :3]) @ st.Rp
    new.Tp = st.Tp + dp[:, 3:6]
    new.sig = st.sig + dp[:, 6]
    new.logd = st.logd + dl
    return new


def solve(prob: Problem, st: State, fr: Freedom, opt: SolverOptions | None = None, log=None):
    """Minimise the objective from ``st``; returns ``(state, loss, iterations, history)``."""
    opt = opt or SolverOptions()
    cam, pair, N = _index_map(prob, fr)
    loss = weighted_loss(prob, st)
    history = [loss]
    lam = opt.lm_init
    scale_ref = float(st.logd.exp().median())
    eps = 1e-12 * scale_ref
    sig_idx = pair[:, 6]
    it = 0
    small = 0
    for it in range(1, opt.max_iters + 1):
        Hd = torch.zeros(N + 1, N + 1, dtype=F64)
        gd = torch.zeros(N + 1, dtype=F64)
        schur = []
        for k, (eids, _, _) in enumerate(prob.obs):
            M, gG, B, h, gl = _linearise(prob, st, k, opt.beta, eps)
            idx = torch.cat((cam[k].expand(len(eids), 7), pair[eids]), 1)  # [K, 14]
            Hd.index_put_((idx[:, :, None].expand(-1, -1, 14), idx[:, None, :].expand(-1, 14, -1)), M,
                          accumulate=True)
            gd.index_add_(0, idx.reshape(-1), gG.reshape(-1))
            schur.append((torch.cat((cam[k], pair[eids].reshape(-1))), B, h, gl))
        Hd, gd = Hd[:N, :N], gd[:N]
        accepted = False
        while not accepted:
            H = Hd + torch.diag(lam * Hd.diagonal() + 1e-30)
            g = gd.clone()
            Hx = torch.zeros(N + 1, N + 1, dtype=F64)
            gx = torch.zeros(N + 1, dtype=F64)
            for idx, B, h, gl in schur:
                hd = h * (1 + lam) + 1e-12 * h.mean()
                Bs = B / hd[:, None]
                Hx[idx[:, None], idx[None, :]] += Bs.T @ B  # idx has no duplicates except the dummy
                gx.index_add_(0, idx, Bs.T @ gl)
            H = H - Hx[:N, :N]
            g = g - gx[:N]
            if fr.norm_scale:
                a = torch.zeros(N, dtype=F64)
                a[sig_idx] = 1.0 / len(sig_idx) ** 0.5
                Pa = H @ a
                c = float(H.diagonal()[sig_idx].mean())
                H = H - Pa[:, None] * a[None, :] - a[:, None] * Pa[None, :] + (a @ Pa + c) * a[:, None] * a[None, :]
                g = g - (g @ a) * a
            try:
                L = torch.linalg.cholesky(H)
                dy = -torch.cholesky_solve(g[:, None], L)[:, 0]
            except RuntimeError:
                lam *= 10
                continue
            dyx = torch.cat((dy, dy.new_zeros(1)))
            dl = torch.stack([-(gl + B @ dyx[idx]) / (h * (1 + lam) + 1e-12 * h.mean()) for idx, B, h, gl in schur])
            cand = _update(st, prob, cam, pair, N, dy, dl)
            new_loss = weighted_loss(prob, cand)
            if new_loss <= loss:
                accepted = True
                step = max(float(dy.abs().max()) if N else 0.0, float(dl.abs().max()))
                rel = (loss - new_loss) / max(loss, 1e-300)
                st, loss = cand, new_loss
                lam = max(lam / 3, 1e-12)
                history.append(loss)
                if log:
                    log(f"it {it}: loss {loss:.9g} lam {lam:.2g} step {step:.2g}", st)
                small = small + 1 if (rel < opt.tol or step < opt.step_tol) else 0
            else:
                lam *= 8
                if lam > 1e8:
                    return st, loss, it, history
        if small >= 2:
            break
    return st, loss, it, history
