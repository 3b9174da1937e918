"""Statistics over many localizations: dye classes (a Gaussian mixture on spectral centres) and
the spectral precision (spread of an estimate over the frames of one molecule)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture

#: spectral precision: output column -> spectra.csv column whose spread over a run it measures
PRECISION_COLUMNS = {
    "sc_raw_std_nm": "sc_raw_nm",
    "sc_denoised_std_nm": "sc_denoised_nm",
    "fit_raw_std_nm": "fit_raw_centre_nm",
    "fit_denoised_std_nm": "fit_denoised_centre_nm",
    "sc_mle_std_nm": "sc_mle_trusted_nm",
}

#: the precision's column of trusted maximum-likelihood centres (flagged frames NaN), made by
#: :func:`trusted_mle`: the spread of flagged values is no precision of what users read
TRUSTED_MLE = "sc_mle_trusted_nm"


def trusted_mle(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the ``TRUSTED_MLE`` column: ``sc_mle_nm`` where ``sc_mle_flag`` is empty."""
    trusted = runs["sc_mle_flag"].fillna("").to_numpy() == ""
    return runs.assign(**{TRUSTED_MLE: np.where(trusted, runs["sc_mle_nm"], np.nan)})


def fit_dye_mixture(
    values: np.ndarray, n_dyes: int | None, seed: int, max_dyes: int = 5
) -> GaussianMixture | None:
    """Gaussian mixture on the finite spectral centres (nm); ``n_dyes`` None = the number of
    components chosen by BIC (1 to ``max_dyes``). None with fewer than two values."""
    values = np.asarray(values, dtype=float)
    data = values[np.isfinite(values), None]
    if len(data) < 2:
        return None
    if n_dyes is None:
        fits = [
            GaussianMixture(k, random_state=seed).fit(data)
            for k in range(1, min(max_dyes, len(data)) + 1)
        ]
        return min(fits, key=lambda m: m.bic(data))
    return GaussianMixture(min(n_dyes, len(data)), random_state=seed).fit(data)


def assign_dyes(gmm: GaussianMixture | None, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's most probable class (0 = shortest wavelength) and its probability; class -1
    and NaN where the value is not finite or there is no mixture."""
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    cls = np.full(len(values), -1, dtype=np.int64)
    prob = np.full(len(values), np.nan)
    if gmm is None or not ok.any():
        return cls, prob
    order = np.argsort(gmm.means_[:, 0])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    post = gmm.predict_proba(values[ok, None])
    cls[ok] = rank[post.argmax(1)]
    prob[ok] = post.max(1)
    return cls, prob


def classify_dyes(
    sc: np.ndarray, n_dyes: int | None, seed: int, max_dyes: int = 5
) -> tuple[np.ndarray, np.ndarray, int]:
    """Gaussian mixture on spectral centres (nm), each centre classified by it: class (0 =
    shortest wavelength), its probability and the number of classes; NaN centres get -1."""
    gmm = fit_dye_mixture(sc, n_dyes, seed, max_dyes)
    cls, prob = assign_dyes(gmm, sc)
    return cls, prob, 0 if gmm is None else int(gmm.n_components)


def classify_localizations(
    mle_nm: np.ndarray,
    trusted: np.ndarray,
    denoised_nm: np.ndarray,
    n_dyes: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One dye class per localization: the mixture is fitted on the trusted maximum-likelihood
    centres, and each localization is classified by the value it is read by (its trusted
    maximum-likelihood centre, else its denoised least-squares fit); -1 where it has neither."""
    trusted = np.asarray(trusted, dtype=bool)
    gmm = fit_dye_mixture(np.where(trusted, mle_nm, np.nan), n_dyes, seed)
    return assign_dyes(gmm, np.where(trusted, mle_nm, denoised_nm))


def precision_by_signal(df: pd.DataFrame, columns: dict[str, str], n_bins: int) -> pd.DataFrame:
    """Spectral precision: std of each estimate across the frames of one run (one molecule),
    summarised (median over runs) per bin of the run's mean signal."""
    runs = df[df["cluster"] >= 0]
    if runs.empty:
        return pd.DataFrame(
            columns=["signal_bin", "signal_min", "signal_max", "runs"] + list(columns)
        )
    agg = runs.groupby("cluster").agg(
        signal=("signal", "mean"),
        n=("signal", "size"),
        **{k: (v, "std") for k, v in columns.items()},
    )
    agg = agg[agg["n"] >= 2]
    bins = pd.qcut(agg["signal"], q=min(n_bins, max(len(agg), 1)), duplicates="drop")
    out = agg.groupby(bins, observed=True).agg(
        runs=("n", "size"), **{k: (k, "median") for k in columns}
    )
    out.insert(0, "signal_min", [iv.left for iv in out.index])
    out.insert(1, "signal_max", [iv.right for iv in out.index])
    out.insert(0, "signal_bin", np.arange(len(out)))
    return out.reset_index(drop=True)
