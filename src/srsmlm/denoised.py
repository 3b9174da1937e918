"""The denoised readout anchored on the acquisition's own trusted maximum-likelihood values.

A trained U-Net shifts the spectral centre by an amount that depends on where the spectrum lies
in its box (its strided layers, the positions it was trained on), differently for every trained
network. The maximum-likelihood readout of the raw counts has no such shift and, where it is
trusted, sits at the Cramér-Rao bound. Both read the same photons, so a denoised value's error is
the photon noise the maximum-likelihood value also carries (its bound ``c``) plus the network's
own error ``eta``: the difference ``r = denoised - maximum-likelihood`` of a trusted localization
is ``eta`` plus the shift. Each acquisition calibrates its own denoised values from that:

* the shift curve: the median of ``r`` over the trusted localizations in equal-count bins of the
  maximum-likelihood centre's position in the spectral box (not the denoised one's, whose own
  error would tilt the curve), interpolated linearly between the bins (flat beyond the outer
  ones), with its standard error; it is subtracted at each denoised centre's position;
* the network's error ``eta``, modelled as ``sqrt(a^2 + (k * spread)^2)`` of the spread of the
  centre over the cycle-spin shifts: non-negative least squares on the robust (MAD) variance of
  the corrected differences in equal-count bins of the spread;
* the error ``fit_denoised_err_nm = S * sqrt(eta^2 + c^2 + se^2)`` (``c`` capped at the
  spectral box's width over sqrt(12), the error of a value known only to lie in the box; 0 where
  the maximum-likelihood fit has none), with ``S`` (at least 1) set apart for the trusted, the
  crowded and the otherwise flagged localizations so that 95 % of their differences ``r`` lie
  within 2x: for flagged ones ``r`` also carries the flagged value's own error, so ``S`` errs
  on the safe side.

With fewer than ``min_pairs`` trusted pairs there is nothing to anchor on: the values are left
as they are, the error is NaN and the stage logs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls
from scipy.stats import median_abs_deviation

log = logging.getLogger(__name__)

#: the share of each stratum's normalised differences the error reaches within 2x
TARGET_COVERAGE_2X = 0.95


@dataclass(frozen=True)
class AnchorConfig:
    """``spectra.denoised_anchor_bins`` and ``spectra.denoised_anchor_min_pairs``."""

    bins: int
    min_pairs: int

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> AnchorConfig:
        return cls(int(section["denoised_anchor_bins"]), int(section["denoised_anchor_min_pairs"]))


#: the classes the error's scale is set apart for, by maximum-likelihood flag
STRATA = ("trusted", "crowded", "flagged")


def strata(flags: np.ndarray) -> np.ndarray:
    """0 (trusted: no flag), 1 (``crowded``) or 2 (any other flag) per localization."""
    flags = np.asarray(flags, dtype=object)
    return np.where(flags == "", 0, np.where(flags == "crowded", 1, 2))


@dataclass(frozen=True)
class DenoisedAnchor:
    """The shift curve (``box_px`` -> ``shift_nm`` +- ``shift_se_nm``) and the error model of
    one acquisition (see the module's docstring)."""

    box_px: np.ndarray
    shift_nm: np.ndarray
    shift_se_nm: np.ndarray
    floor_nm: float
    spread_factor: float
    crlb_cap_nm: float
    scales: tuple[float, float, float]
    n_pairs: int

    def shift(self, box_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shift (nm) at each position in the box and its standard error."""
        return (
            np.interp(box_px, self.box_px, self.shift_nm),
            np.interp(box_px, self.box_px, self.shift_se_nm),
        )

    def unscaled_error(
        self, spread_nm: np.ndarray, box_px: np.ndarray, crlb_nm: np.ndarray
    ) -> np.ndarray:
        """``sqrt(eta^2 + c^2 + se^2)`` of each corrected denoised value (nm)."""
        _, se = self.shift(box_px)
        c = np.minimum(np.nan_to_num(np.asarray(crlb_nm, float), nan=0.0), self.crlb_cap_nm)
        eta2 = self.floor_nm**2 + (self.spread_factor * np.asarray(spread_nm)) ** 2
        return np.sqrt(eta2 + c**2 + se**2)

    def error(
        self, spread_nm: np.ndarray, box_px: np.ndarray, crlb_nm: np.ndarray, stratum: np.ndarray
    ) -> np.ndarray:
        """The error (1 sd, nm) of each corrected denoised value."""
        return np.asarray(self.scales)[stratum] * self.unscaled_error(spread_nm, box_px, crlb_nm)

    def summary(self) -> dict[str, Any]:
        """What the stage logs and writes: the curve and the error model."""
        return {
            "pairs": self.n_pairs,
            "box_px": np.round(self.box_px, 2).tolist(),
            "shift_nm": np.round(self.shift_nm, 3).tolist(),
            "shift_se_nm": np.round(self.shift_se_nm, 3).tolist(),
            "floor_nm": round(self.floor_nm, 3),
            "spread_factor": round(self.spread_factor, 3),
            "scales": dict(zip(STRATA, np.round(self.scales, 3).tolist(), strict=True)),
        }


def equal_count_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each value in ``bins`` bins of (about) equal counts, by rank (ties broken by
    position, so any input gives ``bins`` non-empty bins when ``len(values) >= bins``)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.int64)
    out[order] = np.arange(len(values)) * bins // max(len(values), 1)
    return out


def shift_curve(
    box_px: np.ndarray, delta_nm: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median position, median difference and its standard error (the median's, from the MAD)
    in each of ``bins`` equal-count bins of ``box_px``."""
    label = equal_count_bins(box_px, bins)
    centre, shift, se = (np.empty(bins) for _ in range(3))
    for b in range(bins):
        d = delta_nm[label == b]
        centre[b] = np.median(box_px[label == b])
        shift[b] = np.median(d)
        se[b] = 1.2533 * median_abs_deviation(d, scale="normal") / np.sqrt(len(d))
    return centre, shift, se


def error_model(residual_nm: np.ndarray, spread_nm: np.ndarray, bins: int) -> tuple[float, float]:
    """``(a, k)`` of the variance model ``a^2 + k^2 spread^2``: non-negative least squares on
    each spread bin's robust (MAD) variance of the corrected differences (equal counts)."""
    label = equal_count_bins(spread_nm, bins)
    var, s2 = np.empty(bins), np.empty(bins)
    for b in range(bins):
        sel = label == b
        var[b] = median_abs_deviation(residual_nm[sel], scale="normal") ** 2
        s2[b] = np.median(spread_nm[sel] ** 2)
    (a2, k2), _ = nnls(np.column_stack([np.ones(bins), s2]), var)
    return float(np.sqrt(a2)), float(np.sqrt(k2))


def coverage_scales(normalised: np.ndarray, stratum: np.ndarray, min_count: int) -> np.ndarray:
    """Per stratum, the factor (at least 1) that brings 95 % of ``|normalised|`` within 2; a
    stratum with fewer than ``min_count`` values takes the largest of the others'."""
    scales = np.full(len(STRATA), np.nan)
    for g in range(len(STRATA)):
        values = np.abs(normalised[(stratum == g) & np.isfinite(normalised)])
        if len(values) >= min_count:
            q = float(np.quantile(values, TARGET_COVERAGE_2X)) / 2.0
            scales[g] = max(1.0, q)
    return np.where(np.isnan(scales), np.nanmax(scales), scales)


def fit_anchor(
    readout: dict[str, np.ndarray],
    nm_per_px: float,
    box_width_px: int,
    config: AnchorConfig,
) -> DenoisedAnchor | None:
    """The acquisition's shift curve and error model from ``readout``'s arrays (``denoised_nm``,
    ``box_px``: the denoised centre's position in the spectral box, ``spread_nm``, ``mle_nm``,
    ``crlb_nm``, ``stratum``: :func:`strata` of the maximum-likelihood flags); None (logged) when
    fewer than ``config.min_pairs`` trusted localizations have a denoised value."""
    d, p, s = readout["denoised_nm"], readout["box_px"], readout["spread_nm"]
    m, stratum = readout["mle_nm"], readout["stratum"]
    pairs = (stratum == 0) & np.isfinite(d) & np.isfinite(m) & np.isfinite(s) & np.isfinite(p)
    n = int(pairs.sum())
    if n < max(config.min_pairs, 2 * config.bins):
        log.warning(
            "denoised values not anchored: %d trusted maximum-likelihood values with a denoised "
            "value, fewer than spectra.denoised_anchor_min_pairs = %d; fit_denoised_centre_nm "
            "stays uncorrected and fit_denoised_err_nm is empty",
            n,
            config.min_pairs,
        )
        return None
    at_mle = p[pairs] + (m[pairs] - d[pairs]) / nm_per_px
    centre, shift, se = shift_curve(at_mle, (d - m)[pairs], config.bins)
    order = np.argsort(centre, kind="stable")
    r = d - np.interp(p, centre[order], shift[order]) - m
    a, k = error_model(r[pairs], s[pairs], config.bins)
    cap = abs(nm_per_px) * box_width_px / np.sqrt(12.0)
    curve = (centre[order], shift[order], se[order])
    unscaled = DenoisedAnchor(*curve, a, k, cap, (1.0, 1.0, 1.0), n)
    normalised = r / unscaled.unscaled_error(s, p, readout["crlb_nm"])
    scales = coverage_scales(normalised, stratum, 2 * config.bins)
    return DenoisedAnchor(*curve, a, k, cap, tuple(float(v) for v in scales), n)


def anchor_columns(
    anchor: DenoisedAnchor | None, readout: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``fit_denoised_centre_nm`` corrected by the shift curve, the correction itself
    (``fit_denoised_shift_nm``) and ``fit_denoised_err_nm`` (NaN where there is no denoised
    value, or no anchor)."""
    d = readout["denoised_nm"]
    if anchor is None:
        nan = np.full(len(d), np.nan)
        return {
            "fit_denoised_centre_nm": d,
            "fit_denoised_shift_nm": nan,
            "fit_denoised_err_nm": nan,
        }
    p = readout["box_px"]
    shift, _ = anchor.shift(p)
    has = np.isfinite(d)
    err = anchor.error(readout["spread_nm"], p, readout["crlb_nm"], readout["stratum"])
    return {
        "fit_denoised_centre_nm": d - shift,
        "fit_denoised_shift_nm": np.where(has, shift, np.nan),
        "fit_denoised_err_nm": np.where(has, err, np.nan),
    }
