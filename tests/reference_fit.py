"""The former srsmlm.spectra.gaussian_fit, kept as the reference the compiled fit must
reproduce (tests/test_spectra.py, benchmarks/bench_profile_fit.py)."""

import numpy as np


def reference_gaussian_fit(profiles, wavelengths, iterations=30):
    """The former gaussian_fit (batched NumPy, a fixed 30 iterations for every profile),
    verbatim: the reference the compiled fit must reproduce."""
    p = np.asarray(profiles, dtype=np.float64)
    lam = np.asarray(wavelengths, dtype=np.float64)
    n = len(p)
    step = np.abs(lam[:, 1] - lam[:, 0])
    c0 = np.percentile(p, 20, axis=1)
    pos = np.clip(p - c0[:, None], 0, None)
    tot = pos.sum(1)
    mu0 = np.where(tot > 0, (pos * lam).sum(1) / np.where(tot > 0, tot, 1), lam.mean(1))
    var0 = np.where(
        tot > 0, (pos * (lam - mu0[:, None]) ** 2).sum(1) / np.where(tot > 0, tot, 1), 100.0
    )
    theta = np.column_stack(
        [np.maximum(p.max(1) - c0, 1e-12), mu0, np.sqrt(np.clip(var0, 4 * step**2, None)), c0]
    )
    damping = np.full(n, 1e-2)

    def model(t):
        a, mu, s, c = (t[:, i : i + 1] for i in range(4))
        g = np.exp(-((lam - mu) ** 2) / (2 * s**2))
        return a * g + c, g

    pred, g = model(theta)
    cost = ((pred - p) ** 2).sum(1)
    for _ in range(iterations):
        a, mu, s = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        jac = np.stack(
            [g, a * g * (lam - mu) / s**2, a * g * (lam - mu) ** 2 / s**3, np.ones_like(g)], axis=2
        )
        r = p - pred
        jtj = np.einsum("nwi,nwj->nij", jac, jac)
        jtr = np.einsum("nwi,nw->ni", jac, r)
        diag = np.einsum("nii->ni", jtj)
        lhs = jtj + damping[:, None, None] * np.einsum("ni,ij->nij", diag + 1e-12, np.eye(4))
        try:
            delta = np.linalg.solve(lhs, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            delta = np.zeros_like(theta)
        trial = theta + delta
        trial[:, 2] = np.abs(trial[:, 2]) + 1e-9
        tpred, tg = model(trial)
        tcost = ((tpred - p) ** 2).sum(1)
        better = np.isfinite(tcost) & (tcost < cost)
        theta[better], pred[better], g[better], cost[better] = (
            trial[better],
            tpred[better],
            tg[better],
            tcost[better],
        )
        damping = np.where(better, damping / 3, damping * 4)
    amp, centre, width, off = theta.T
    bad = (amp <= 0) | (centre < lam.min(1)) | (centre > lam.max(1)) | (width > np.ptp(lam, axis=1))
    out = {"centre": centre, "width": width, "amplitude": amp, "offset": off}
    return {k: np.where(bad, np.nan, v) for k, v in out.items()}
