"""Which spectrum is whose: the labelling of a jointly fitted group's spectra.

A joint fit's image model is a sum over emitters, so handing two emitters' spectra (photons,
centre, width, row) to each other leaves the likelihood unchanged: where two localizations of a
group are closer in y than the rows the fit lets a spectrum move, the photons of the spectral
region alone cannot say which spectrum belongs to which localization. Two independent measurements
can: the spectrum's row against the localization's y, and its photons against the localization's
signal (a fixed share of an emitter's photons goes to each image). Each is compared in log-odds
with what the acquisition's well-separated group members show (median and robust spread), and

    score(i -> a) = -(y_a - y_i - dy)^2 / (2 (var y_a + e_y^2))
                    - (log N_a - log S_i - k)^2 / (2 (var N_a / N_a^2 + e_k^2))

scores spectrum ``a`` for localization ``i``: ``var y_a`` and ``var N_a`` are the bounds of the
joint fit (an overlap that blurs a row or a photon count widens its term), ``e_y`` and ``e_k``
what the well-separated members spread beyond their bounds (the localization's own error, the
signal's). For every pair of members closer than
``min_row_separation_px`` the swap is scored: a better swap is made; a swap whose odds against
the kept labelling are below ``label_odds`` (99: the wrong one at least 1 % likely), or a pair on
one row (closer than ``same_row_px``) whose swap is possible, leaves the pair's labelling
ambiguous, and a member whose row and photons disagree with its localization's (p below
``label_consistency_p``) is not trusted either (both flagged ``crowded``). Without a learnt
photon spread (too few well-separated members, or no signal) no close member is trusted: the
rows alone cannot see a merged fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc
from scipy.stats import median_abs_deviation

log = logging.getLogger(__name__)

#: fewer well-separated members than this: their spread is not learnt (see the module docstring)
MIN_REFERENCE = 30
#: the per-emitter arrays of a joint fit that travel with a spectrum when it is handed over
SPECTRUM_KEYS = ("N", "s", "y0", "var_l0", "var_N", "var_y0", "rho")


@dataclass(frozen=True)
class LabelRules:
    """The ``spectra:`` keys of the labelling: members closer than ``rows`` (px,
    ``min_row_separation_px``) are close; a swap whose odds against the kept labelling are below
    ``odds`` (``label_odds``) leaves the pair ambiguous; a close member whose row and photons
    disagree with its localization's below ``consistency_p`` (``label_consistency_p``: the
    chi-square of its score) is a merged fit; localizations closer than ``same_row_px`` (px) in
    y are on one row, their overlapping spectra not trusted whatever the photons say (measured:
    a 1:3 pair 5-20 px apart is read 3-10x worse than its bound there)."""

    rows: float
    odds: float
    consistency_p: float
    same_row_px: float


@dataclass(frozen=True)
class Consistency:
    """Median of the row offset (px) and its spread beyond the fits' bounds (``e_y``); the same
    for the log photon ratio (``k``, ``e_k``); NaN where unknown."""

    dy: float
    e_y: float
    k: float
    e_k: float


def close_pairs(y: np.ndarray, starts: np.ndarray, rows: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)``, ``i < j``, of members of one group closer than ``rows`` in y."""
    sizes = np.diff(starts)
    member = np.repeat(np.arange(len(sizes)), sizes)
    pairs = []
    for k in range(1, int(sizes.max(initial=1))):
        i = np.arange(len(y) - k)
        hit = (member[k:] == member[:-k]) & (np.abs(y[k:] - y[:-k]) < rows)
        pairs.append((i[hit], i[hit] + k))
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def members_of(pairs: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    """Mask of the ``n`` members that are in any of ``pairs``."""
    out = np.zeros(n, dtype=bool)
    out[pairs[0]] = out[pairs[1]] = True
    return out


def learn_consistency(
    row_offset: np.ndarray,
    var_row: np.ndarray,
    log_ratio: np.ndarray,
    var_log_ratio: np.ndarray,
    reference: np.ndarray,
) -> Consistency:
    """:class:`Consistency` from the ``reference`` members (mask: converged, no other member
    near): per quantity the median and the spread beyond the bounds (``var_*``), the square
    root of the robust (MAD) variance less the median bound (at least 1 % of the robust SD);
    NaN for both with fewer than :data:`MIN_REFERENCE` finite values."""

    def robust(values: np.ndarray, var: np.ndarray) -> tuple[float, float]:
        keep = reference & np.isfinite(values) & np.isfinite(var)
        if keep.sum() < MIN_REFERENCE:
            return np.nan, np.nan
        v = values[keep]
        spread = float(median_abs_deviation(v, scale="normal"))
        extra = spread**2 - float(np.median(var[keep]))
        return float(np.median(v)), max(np.sqrt(max(extra, 0.0)), 0.01 * spread, 1e-6)

    return Consistency(*robust(row_offset, var_row), *robust(log_ratio, var_log_ratio))


def _score(fit: dict[str, np.ndarray], a: np.ndarray, i: np.ndarray, y_loc: np.ndarray,
           signal: np.ndarray, c: Consistency) -> np.ndarray:  # fmt: skip
    """Log-odds score of the spectra ``a`` of ``fit`` (``y0`` in frame rows, ``N``, their
    bounds) for the localizations ``i``; a term whose spread is unknown, or whose signal is not
    positive, counts 0."""
    n, var_n = fit["N"][a], fit["var_N"][a]
    rows = (fit["y0"][a] - y_loc[i] - c.dy) ** 2 / (fit["var_y0"][a] + c.e_y**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(n) - np.log(signal[i])
        photons = (ratio - c.k) ** 2 / (var_n / n**2 + c.e_k**2)
    terms = [t for t, e in ((rows, c.e_y), (photons, c.e_k)) if np.isfinite(e)]
    return -0.5 * sum((np.where(np.isfinite(t), t, 0.0) for t in terms), np.zeros(len(a)))


def swap_gain(
    fit: dict[str, np.ndarray],
    pairs: tuple[np.ndarray, np.ndarray],
    y_loc: np.ndarray,
    signal: np.ndarray,
    c: Consistency,
) -> np.ndarray:
    """Score of each pair's swap minus that of its kept labelling (``fit``'s ``y0``, ``N``)."""
    i, j = pairs
    kept = _score(fit, i, i, y_loc, signal, c) + _score(fit, j, j, y_loc, signal, c)
    swap = _score(fit, j, i, y_loc, signal, c) + _score(fit, i, j, y_loc, signal, c)
    return swap - kept


def swap_spectra(
    fit: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, centre: np.ndarray, col0: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``fit`` with the spectra of members ``i`` and ``j`` handed to each other (``centre``:
    each spectrum's frame column; ``l0`` re-read in the new owner's box starting at ``col0``),
    and the swapped centres."""
    out = {k: v.copy() for k, v in fit.items()}
    for key in SPECTRUM_KEYS:
        out[key][i], out[key][j] = fit[key][j], fit[key][i]
    moved = centre.copy()
    moved[i], moved[j] = centre[j], centre[i]
    out["l0"] = moved - col0
    return out, moved


def resolve_labelling(
    fit: dict[str, np.ndarray],
    y_loc: np.ndarray,
    signal: np.ndarray,
    col0: np.ndarray,
    region_row0: np.ndarray,
    starts: np.ndarray,
    rules: LabelRules,
    width: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The joint fits with the spectra of close members (nearer than ``rules.rows`` in y)
    relabelled where a swap scores better, and the mask of members whose labelling stays
    ambiguous (see the module docstring). ``fit``: per emitter ``l0`` (px in the own box starting at frame column
    ``col0``, ``width`` wide), ``y0`` (rows of the group's region starting at frame row
    ``region_row0``), ``N``, ``var_l0``, ...; ``y_loc`` (frame rows) and ``signal`` (photons,
    NaN if unknown) of each localization; ``starts``: each group's first member."""
    y_fit = fit["y0"] + region_row0
    centre = fit["l0"] + col0
    i, j = close_pairs(y_loc, starts, rules.rows)
    far = ~members_of(close_pairs(y_loc, starts, 2.0 * rules.rows), len(y_loc))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(fit["N"]) - np.log(signal)
        var_log_ratio = fit["var_N"] / fit["N"] ** 2
    reference = far & fit["converged"]
    c = learn_consistency(y_fit - y_loc, fit["var_y0"], log_ratio, var_log_ratio, reference)
    framed = fit | {"y0": y_fit}
    gain = _possible(swap_gain(framed, (i, j), y_loc, signal, c), i, j, centre, col0, width)
    for p in np.argsort(-gain, kind="stable"):
        if gain[p] <= 0:
            break
        if swap_gain(framed, (i[p : p + 1], j[p : p + 1]), y_loc, signal, c)[0] > 0:
            framed, centre = swap_spectra(framed, i[p : p + 1], j[p : p + 1], centre, col0)
    gain = _possible(swap_gain(framed, (i, j), y_loc, signal, c), i, j, centre, col0, width)
    # on one row two overlapping spectra share their photons in a way the fit does not pin
    # down: only a pair whose swap is impossible is read
    one_row = np.abs(y_loc[i] - y_loc[j]) < rules.same_row_px
    unsure = (gain > -np.log(rules.odds)) | (one_row & np.isfinite(gain))
    ambiguous = members_of((i[unsure], j[unsure]), len(y_loc))
    consistent = _consistent(framed, y_loc, signal, c, rules.consistency_p)
    ambiguous |= members_of((i, j), len(y_loc)) & ~consistent
    log.info(
        "labelling of %d close pairs: rows %+.2f px +- %.2f beyond their bounds, log photon ratio "
        "%+.2f +- %.2f (from %d well-separated members); %d pairs ambiguous, %d members flagged",
        len(i), c.dy, c.e_y, c.k, c.e_k, int(reference.sum()), int(unsure.sum()),
        int(ambiguous.sum()),
    )  # fmt: skip
    return framed | {"y0": framed["y0"] - region_row0}, ambiguous


def _consistent(
    fit: dict[str, np.ndarray],
    y_loc: np.ndarray,
    signal: np.ndarray,
    c: Consistency,
    p_min: float,
) -> np.ndarray:
    """Whether each member's spectrum agrees with its localization in row and photons (the
    score's chi-square, p >= ``p_min``). A merged fit, one spectrum taking a
    close neighbour's photons, fails on the photons; without a learnt photon spread (or a
    signal) nothing is consistent: rows alone cannot see a merge."""
    n = np.arange(len(y_loc))
    chi2 = -2.0 * _score(fit, n, n, y_loc, signal, c)
    dof = 1.0 + np.isfinite(c.e_y)
    known = np.isfinite(c.e_k) & (signal > 0) & np.isfinite(fit["N"])
    return known & (chdtrc(dof, chi2) >= p_min)


def _possible(
    gain: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    centre: np.ndarray,
    col0: np.ndarray,
    width: float,
) -> np.ndarray:
    """``gain`` where the swap keeps each spectrum inside its new owner's box, else -inf."""
    li, lj = centre[j] - col0[i], centre[i] - col0[j]
    inside = (li >= 0) & (li <= width) & (lj >= 0) & (lj <= width)
    return np.where(inside, gain, -np.inf)
