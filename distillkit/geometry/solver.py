"""Joint second-order solver for the global-alignment objective on a ``Problem`` (all unknowns at once).

Objective (the official one): ``L = sum_{e, side, p} w * ||P(p) - A_e(p)|| / (E * S)``, un-squared
Euclidean distances, ``w = log(conf)``.  Each iteration builds a Gauss-Newton model of ``L`` in which
the curvature of each norm is ``w/||r|| * (I - beta * r r^T / ||r||^2)`` (``beta = 0``: the IRLS /
Weiszfeld majoriser; ``beta = 1``: the exact Hessian of the norm, which has no radial curvature and
overshoots; default 0.5), linearised in

* per pixel: log-depth (one unknown per sampled pixel),
* per camera: rotation increment (3), centre (3), log-focal (1) -- fixed ones are dropped,
* per edge: rotation increment (3), translation (3), log-scale (1),

eliminates the depths exactly (Schur complement: a depth couples only with its camera and the edges
observing its image, so the reduced system has ``7 x (cameras + edges)`` unknowns whatever the pixel
count), solves it by Cholesky with Levenberg-Marquardt damping and back-substitutes the depths.
The official scale gauge (geometric mean of the pair scales fixed) is a linear constraint on the
log-scales, enforced exactly by projecting the reduced system onto its null space; the rigid gauge is
fixed by holding one camera pose (or the known poses).

Cost per iteration, image by image: the ``sum_p w/||r|| J^T J`` blocks come from weighted moments of
a few per-pixel features (``[1, j, phi]`` and ``[1, Y]``) mapped by constant tensors, so the
per-(observation, pixel) work is a few dozen flops; the Schur fill-in costs ``S (7 + 7 K)^2`` per image
with ``K`` observations, and the dense Cholesky ``N^3 / 3`` with ``N = 7 (cameras + edges)`` (about
0.15 s for 50 images / 300 edges).  The fill-in and the ``beta`` correction are accumulated in float32
(model terms only: residuals, gradients and the loss that accepts a step stay float64).  Memory is
``O(K S)`` per image (pixels in chunks of 1024) on top of the problem itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillkit.geometry.cameras import so3_exp
from distillkit.geometry.problem import Problem, State, mm, weighted_loss
from distillkit.geometry.system import ReducedSystem


def _feature_maps():
    eps = np.zeros((3, 3, 3))
    eps[0, 1, 2] = eps[1, 2, 0] = eps[2, 0, 1] = 1.0
    eps[0, 2, 1] = eps[2, 1, 0] = eps[1, 0, 2] = -1.0
    # row c of the residual Jacobian, column i, as a linear function of features
    LC = np.zeros((3, 7, 7))  # camera columns; features [1, j0, j1, j2, phi0, phi1, phi2]
    LA = np.zeros((3, 7, 4))  # edge columns; features [1, Y0, Y1, Y2]
    for c in range(3):
        LC[c, :3, 1:4] = eps[c]  # -[j]x
        LA[c, :3, 1:4] = -eps[c]  # +[Y]x  (residual = P - A)
        LC[c, 3 + c, 0] = 1.0
        LA[c, 3 + c, 0] = -1.0
        LC[c, 6, 4 + c] = 1.0
        LA[c, 6, 1 + c] = -1.0
    return (np.einsum("cia,cjb->ijab", LC, LC).reshape(49, 49), np.einsum("cia,cjb->ijab", LC, LA).reshape(49, 28),
            np.einsum("cia,cjb->ijab", LA, LA).reshape(49, 16))


T_CC, T_CA, T_AA = _feature_maps()
Q14_ROWS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 10])  # G^T v entry -> distinct row
Q14_SIGN = np.outer(*(2 * [np.array([1.0] * 7 + [-1.0] * 7)]))


def _cross(a, b):
    """Cross product along axis -2 (component-major arrays ``[..., 3, S]``)."""
    a0, a1, a2 = a[..., 0, :], a[..., 1, :], a[..., 2, :]
    b0, b1, b2 = b[..., 0, :], b[..., 1, :], b[..., 2, :]
    return np.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), -2)


@dataclass
class SolverOptions:
    max_iters: int = 30
    beta: float = 0.5  # fraction of the radial curvature of the norm kept in the model (see module doc)
    lm_init: float = 1e-5
    tol: float = 1e-7  # stop when an accepted step lowers the loss by less than this (relative) ...
    step_tol: float = 1e-6  # ... or moves no parameter by more than this (radians / log units)


@dataclass
class Freedom:
    pose_free: np.ndarray  # [n] bool
    focal_free: np.ndarray  # [n] bool
    norm_scale: bool  # geometric mean of the pair scales fixed


def index_map(n: int, E: int, fr: Freedom):
    """Slots of the reduced unknowns: camera ``[n, 7]`` and edge ``[E, 7]``; fixed ones -> dummy ``N``."""
    cam = np.full((n, 7), -1, dtype=np.int64)
    cur = 0
    for k in range(n):
        if fr.pose_free[k]:
            cam[k, :6] = np.arange(cur, cur + 6)
            cur += 6
        if fr.focal_free[k]:
            cam[k, 6] = cur
            cur += 1
    pair = np.arange(cur, cur + 7 * E).reshape(E, 7)
    N = cur + 7 * E
    cam[cam < 0] = N
    return cam, pair, N


def linearise(prob: Problem, st: State, k: int, beta: float, eps: float, chunk: int = 1024):
    """Model blocks of image ``k``: ``Mcc [7,7]``, ``Mca [K,7,7]``, ``Maa [K,7,7]``, gradients ``gc [7]``,
    ``ga [K,7]``, Schur rows ``Bt [7+7K, S]``, depth curvature ``h [S]`` and depth gradient ``gl [S]``.
    Pixels are processed in chunks so that the temporaries stay small (cache-resident)."""
    eids, X, w = prob.obs[k]
    S = X.shape[2]
    sR = np.exp(st.sig[eids])[:, None, None] * st.Rp[eids]
    x = st.cam_points(prob.offsets, k)
    parts = [_linearise_chunk(st, k, eids, sR, X[:, :, c:c + chunk], w[:, c:c + chunk], x[:, c:c + chunk], beta, eps)
             for c in range(0, S, chunk)]
    if len(parts) == 1:
        return parts[0]
    blocks = [sum(p[i] for p in parts) for i in range(5)]
    return (*blocks, *(np.concatenate([p[i] for p in parts], -1) for i in range(5, 8)))


def _linearise_chunk(st: State, k: int, eids, sR, X, w, x, beta: float, eps: float):
    K, _, S = X.shape
    Rn = st.R[k]
    j = Rn @ x  # dP/dlogd [3, S]
    phi = -(Rn[:, 0:1] * x[0] + Rn[:, 1:2] * x[1])  # dP/dlogf
    Y = mm(sR, X)  # [K, 3, S]
    r = (j + st.t[k][:, None])[None] - Y - st.Tp[eids][:, :, None]
    nr = np.maximum(np.sqrt((r * r).sum(1)), eps)
    om = w / nr
    rh = r / nr[:, None]
    rho = w[:, None] * rh
    rbar = rho.sum(0)
    # gradient of the true objective
    gc = np.concatenate((_cross(j, rbar).sum(-1), rbar.sum(-1), [(phi * rbar).sum()]))
    MYr = mm(Y, rho.transpose(0, 2, 1))  # sum_p Y rho^T  [K, 3, 3]
    Yxr = np.stack((MYr[:, 1, 2] - MYr[:, 2, 1], MYr[:, 2, 0] - MYr[:, 0, 2], MYr[:, 0, 1] - MYr[:, 1, 0]), 1)
    ga = -np.concatenate((Yxr, rho.sum(-1), np.trace(MYr, axis1=1, axis2=2)[:, None]), 1)
    gl = (j * rbar).sum(0)
    # IRLS part of the model from weighted feature moments
    Om = om.sum(0)
    F = np.concatenate((np.ones((1, S)), j, phi), 0)  # [7, S]
    Yf = np.concatenate((np.ones((K, 1, S)), Y), 1)  # [K, 4, S]
    Z = Yf * om[:, None]
    Mcc = (T_CC @ mm(F * Om, F.T).reshape(49)).reshape(7, 7)
    Mca = (mm(F, Z.transpose(0, 2, 1)).reshape(K, 28) @ T_CA.T).reshape(K, 7, 7)
    Maa = (mm(Z, Yf.transpose(0, 2, 1)).reshape(K, 16) @ T_AA.T).reshape(K, 7, 7)
    jr = (j[None] * rh).sum(1)  # [K, S]
    omjr = om * jr
    if beta:
        v = np.sqrt(om)[:, None] * rh
        # G^T v has 14 entries but only 11 distinct ones (the two translation blocks are +-v)
        q = np.concatenate((_cross(j[None], v), v, (phi[None] * v).sum(1, keepdims=True),
                            _cross(Y, v), (Y * v).sum(1, keepdims=True)), 1)  # [K, 11, S]
        q = q.astype(np.float32)
        Q11 = mm(q, q.transpose(0, 2, 1)).astype(np.float64)
        Mq = Q11[:, Q14_ROWS[:, None], Q14_ROWS[None, :]] * Q14_SIGN
        Mcc -= beta * Mq[:, :7, :7].sum(0)
        Mca -= beta * Mq[:, :7, 7:]
        Maa -= beta * Mq[:, 7:, 7:]
    # depth rows (for the Schur complement)
    m = (omjr[:, None] * rh).sum(0)  # [3, S]
    h = Om * (j * j).sum(0) - beta * (omjr * jr).sum(0)
    bc = np.concatenate((-beta * _cross(j, m), Om * j - beta * m,
                         (Om * (phi * j).sum(0) - beta * (phi * m).sum(0))[None]), 0)
    z = om[:, None] * j[None] - beta * omjr[:, None] * rh
    be = -np.concatenate((_cross(Y, z), z, (Y * z).sum(1, keepdims=True)), 1)  # [K, 7, S]
    Bt = np.concatenate((bc, be.reshape(7 * K, S)), 0)
    return Mcc, Mca, Maa, gc, ga, Bt, h, gl


def _update(st: State, cam, pair, dy, dl) -> State:
    d = np.concatenate((dy, [0.0]))  # dummy slot -> 0
    dc, dp = d[cam], d[pair]
    return State(so3_exp(dc[:, :3]) @ st.R, st.t + dc[:, 3:6], st.logf + dc[:, 6], st.logd + dl,
                 so3_exp(dp[:, :3]) @ st.Rp, st.Tp + dp[:, 3:6], st.sig + dp[:, 6])


def local_block(Mcc, Mca, Maa) -> np.ndarray:
    """Image block ``[7 + 7K, 7 + 7K]`` over (its camera, its K edges) from the model pieces."""
    K = len(Maa)
    L = np.zeros((7 + 7 * K, 7 + 7 * K))
    L[:7, :7] = Mcc
    L[:7, 7:] = Mca.transpose(1, 0, 2).reshape(7, 7 * K)
    L[7:, :7] = L[:7, 7:].T
    for a in range(K):
        L[7 + 7 * a:14 + 7 * a, 7 + 7 * a:14 + 7 * a] = Maa[a]
    return L


def solve(prob: Problem, st: State, fr: Freedom, opt: SolverOptions | None = None, log=None):
    """Minimise the objective from ``st``; returns ``(state, loss, iterations, history)``."""
    opt = opt or SolverOptions()
    cam, pair, N = index_map(prob.n, prob.E, fr)
    loss = weighted_loss(prob, st)
    history = [loss]
    lam = opt.lm_init
    eps = 1e-12 * float(np.median(np.exp(st.logd)))
    sig_idx = pair[:, 6]
    it = 0
    for it in range(1, opt.max_iters + 1):
        schur = []
        diag = np.zeros(N + 1)
        for k, (eids, _, _) in enumerate(prob.obs):
            Mcc, Mca, Maa, gc, ga, Bt, h, gl = linearise(prob, st, k, opt.beta, eps)
            idx = np.concatenate((cam[k], pair[eids].reshape(-1)))
            L = local_block(Mcc, Mca, Maa)
            np.add.at(diag, idx, L.diagonal())
            schur.append((idx, L, np.concatenate((gc, ga.reshape(-1))), Bt, h, gl))
        while True:
            system = ReducedSystem(N)
            hds = []
            for idx, L, gloc, Bt, h, gl in schur:
                hd = h * (1 + lam) + 1e-12 * h.mean() + 1e-300
                hds.append(hd)
                Bs = Bt / hd
                # float32 is plenty for the fill-in (a model term; the gradient stays float64)
                system.add(idx, L - mm(Bs.astype(np.float32), Bt.astype(np.float32).T), gloc - Bs @ gl)
            dy = system.solve(lam, sig_idx, fr.norm_scale, diag)
            if dy is None or not np.isfinite(dy).all():
                lam = max(lam * 10, 1e-8)
                if lam > 1e8:
                    return st, loss, it, history
                continue
            dyx = np.concatenate((dy, [0.0]))
            dl = np.stack([-(gl + dyx[idx] @ Bt) / hd for (idx, _, _, Bt, _, gl), hd in zip(schur, hds)])
            cand = _update(st, cam, pair, dy, dl)
            new_loss = weighted_loss(prob, cand)
            if new_loss <= loss:
                break
            lam = max(lam * 8, 1e-8)
            if lam > 1e8:
                return st, loss, it, history
        step = max(float(np.abs(dy).max()) if N else 0.0, float(np.abs(dl).max()))
        rel = (loss - new_loss) / max(loss, 1e-300)
        st, loss = cand, new_loss
        lam = max(lam / 3, 1e-12)
        history.append(loss)
        if log:
            log(f"it {it}: loss {loss:.10g} rel {rel:.2g} lam {lam:.2g} step {step:.2g}", st)
        if rel < opt.tol or step < opt.step_tol:
            break
    return st, loss, it, history
