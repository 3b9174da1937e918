"""Physical simulator of an srSMLM acquisition: the pipeline's built-in demo and test data.

Model (all lengths in camera pixels, wavelengths in nm, signals in photons unless stated):

* Molecules sit at uniform random sub-pixel positions in the localization half of the field.
  Each carries one dye; its emission spectrum is a Gaussian in wavelength whose centre is the
  dye's centre plus a per-molecule environmental shift.
* Blinking: every molecule has a few "on" runs of consecutive frames with geometric lengths;
  the photon count per on-frame is drawn from a gamma distribution around the molecule's
  brightness.
* Each detected photon goes either to the localization spot (Gaussian PSF) or, with probability
  ``spectrum_fraction``, to the spectrum: the PSF dispersed along +x with a linear calibration,
  the column at distance ``spectral_offset`` from the molecule having wavelength
  ``wavelength_at_offset_nm``. Pixel values are exact integrals of the Gaussians over pixels
  (pixel column c spans x in [c, c+1)).
* Camera (the config's ``camera:`` section): uniform background (photons/px), Poisson shot
  noise, for an EMCCD the electron multiplication (Gamma(n, 1) per pixel: excess-noise factor 2),
  gain (ADU/photon), offset (ADU), Gaussian read noise (ADU), rounded and clipped to uint16.

Outputs: a uint16 OME-TIFF stack (written frame block by frame block, never whole in memory),
the localization table a localizer would produce (PeakFit text and ThunderSTORM CSV, with
position noise and false detections) and a ground-truth table.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from scipy.special import erf

from .errors import config_values
from .geometry import Geometry
from .io import atomic_path, write_csv
from .seeds import acquisition_seed

log = logging.getLogger(__name__)

_SQRT2 = np.sqrt(2.0)


#: SimulationParams fields taken from the config's ``camera:`` section (the readout's camera is
#: the simulator's), by their key there
CAMERA_FIELDS = {
    "camera_type": "type",
    "gain": "gain_adu_per_photon",
    "offset_adu": "offset_adu",
    "read_noise_adu": "read_noise_adu",
}


@dataclass(frozen=True)
class SimulationParams:
    """Parameters of one simulated acquisition (units in the field names): the ``simulation:``
    config section (less ``acquisitions`` and ``pixel_size_nm``), the ``camera:`` section
    (:data:`CAMERA_FIELDS`), the geometry and the acquisition's mean photons. Every field
    required; the defaults are the schema's."""

    frames: int
    height: int
    width: int
    n_molecules: int
    mean_photons: float
    photon_cv: float
    molecule_brightness_cv: float
    dyes_nm: tuple[float, ...]
    dye_sd_nm: float
    dye_shift_sd_nm: float
    psf_sigma_px: float
    spectrum_fraction: float
    nm_per_px: float
    wavelength_at_offset_nm: float
    background_photons: float
    camera_type: str
    gain: float
    offset_adu: float
    read_noise_adu: float
    runs_per_molecule: float
    mean_run_length: float
    detection_threshold_photons: float
    false_detection_fraction: float
    spot_region_x: tuple[float, float]
    margin_px: float
    geometry: Geometry

    @classmethod
    def from_config(
        cls, sim: Mapping[str, Any], geometry: Geometry, mean_photons: float
    ) -> SimulationParams:
        """From the ``simulation:`` section with the ``camera:`` section under ``sim["camera"]``
        (as the simulate rule passes them); :class:`~srsmlm.errors.ConfigKeyError` names a
        missing key."""
        own = [
            f
            for f in cls.__dataclass_fields__
            if f not in ("geometry", "mean_photons") and f not in CAMERA_FIELDS
        ]
        kwargs = config_values(sim, "simulation", own)
        camera = config_values(sim.get("camera") or {}, "camera", CAMERA_FIELDS.values())
        kwargs.update({ours: camera[theirs] for ours, theirs in CAMERA_FIELDS.items()})
        for k in ("dyes_nm", "spot_region_x"):
            kwargs[k] = tuple(float(v) for v in kwargs[k])
        return cls(geometry=geometry, mean_photons=float(mean_photons), **kwargs)


def pixel_integrals(centres: np.ndarray, sd: np.ndarray | float, start: np.ndarray, n: int):
    """Fraction of a 1-D Gaussian falling in each of ``n`` unit pixels from ``start``.

    centres, start: shape (k,); returns (k, n). Pixel i spans [start + i, start + i + 1).
    """
    edges = start[:, None] + np.arange(n + 1)[None, :]
    sd = np.broadcast_to(np.asarray(sd, dtype=float), centres.shape)[:, None]
    cdf = 0.5 * (1.0 + erf((edges - centres[:, None]) / (_SQRT2 * sd)))
    return np.diff(cdf, axis=1)


def stack_uuid(seed: int, name: str) -> str:
    """A UUID for the OME-XML header derived from seed and name (same config, same bytes)."""
    return str(uuid.UUID(bytes=hashlib.md5(f"{seed}:{name}".encode()).digest()))


def draw_emissions(p: SimulationParams, rng: np.random.Generator) -> pd.DataFrame:
    """Draw molecules, their blinking runs and per-frame photon counts.

    Returns one row per (molecule, on-frame): ``frame`` (1-based), ``molecule``, ``run``,
    ``x``, ``y`` (px), ``photons`` (total), ``spot_photons``, ``spectrum_photons``,
    ``dye``, ``sc_true_nm`` (centre of the emission spectrum, nm).
    """
    n = p.n_molecules
    x0, x1 = p.spot_region_x
    mx = rng.uniform(x0, x1, n)
    my = rng.uniform(p.margin_px, p.height - p.margin_px, n)
    dye = rng.integers(0, len(p.dyes_nm), n)
    centre = np.asarray(p.dyes_nm)[dye] + rng.normal(0.0, p.dye_shift_sd_nm, n)
    bright = p.mean_photons * rng.gamma(
        1 / p.molecule_brightness_cv**2, p.molecule_brightness_cv**2, n
    )

    n_runs = 1 + rng.poisson(max(p.runs_per_molecule - 1, 0), n)
    mol = np.repeat(np.arange(n), n_runs)
    lengths = rng.geometric(1.0 / p.mean_run_length, mol.size)
    starts = rng.integers(1, p.frames + 1, mol.size)
    run_of = np.repeat(np.arange(mol.size), lengths)
    offs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    frame = starts[run_of] + offs
    m = mol[run_of]
    keep = frame <= p.frames
    frame, m, run_of = frame[keep], m[keep], run_of[keep]
    # a molecule cannot be on twice in one frame: overlapping runs merge
    df = pd.DataFrame({"frame": frame, "molecule": m, "run": run_of})
    df = df.drop_duplicates(["molecule", "frame"]).sort_values(["frame", "molecule"])
    k = len(df)
    mm = df["molecule"].to_numpy()
    cv = p.photon_cv
    photons = bright[mm] * rng.gamma(1 / cv**2, cv**2, k)
    spec = rng.binomial(np.round(photons).astype(np.int64), p.spectrum_fraction)
    df = df.assign(
        x=mx[mm],
        y=my[mm],
        photons=np.round(photons),
        spot_photons=np.round(photons) - spec,
        spectrum_photons=spec.astype(float),
        dye=dye[mm],
        sc_true_nm=centre[mm],
    )
    return df.reset_index(drop=True)


def _render_frame(
    p: SimulationParams, em: pd.DataFrame, pad: int, spot_half: int, spec_half: int
) -> np.ndarray:
    """Expected photons per pixel of one frame (float64 frame-sized array, padded)."""
    g = p.geometry
    img = np.full((p.height + 2 * pad, p.width + 2 * pad), p.background_photons, dtype=np.float64)
    if em.empty:
        return img
    x = em["x"].to_numpy()
    y = em["y"].to_numpy()
    sig = p.psf_sigma_px
    ny = 2 * spot_half + 1
    ys = np.floor(y).astype(int) - spot_half
    gy = pixel_integrals(y, sig, ys.astype(float), ny)
    # localization spot
    xs = np.floor(x).astype(int) - spot_half
    gx = pixel_integrals(x, sig, xs.astype(float), ny)
    _splat(img, em["spot_photons"].to_numpy(), gy, gx, ys + pad, xs + pad)
    # dispersed spectrum: wavelength lam lands at x + offset + (lam - lam0) / nm_per_px
    cx = (
        x
        + g.spectral_offset
        + (em["sc_true_nm"].to_numpy() - p.wavelength_at_offset_nm) / p.nm_per_px
    )
    sdx = np.hypot(p.dye_sd_nm / p.nm_per_px, sig)
    nx = 2 * spec_half + 1
    xs2 = np.floor(cx).astype(int) - spec_half
    gx2 = pixel_integrals(cx, sdx, xs2.astype(float), nx)
    _splat(img, em["spectrum_photons"].to_numpy(), gy, gx2, ys + pad, xs2 + pad)
    return img


def _splat(img, amp, gy, gx, row0, col0) -> None:
    k, ny = gy.shape
    nx = gx.shape[1]
    vals = amp[:, None, None] * gy[:, :, None] * gx[:, None, :]
    rows = np.clip(row0[:, None, None] + np.arange(ny)[None, :, None], 0, img.shape[0] - 1)
    cols = np.clip(col0[:, None, None] + np.arange(nx)[None, None, :], 0, img.shape[1] - 1)
    np.add.at(img, (np.broadcast_to(rows, vals.shape), np.broadcast_to(cols, vals.shape)), vals)


def render_frames(
    p: SimulationParams, emissions: pd.DataFrame, rng: np.random.Generator, block: int = 64
) -> Iterator[np.ndarray]:
    """Yield the camera frames (uint16, H x W) one by one, with shot, read and camera noise."""
    sig = p.psf_sigma_px
    spot_half = int(np.ceil(4 * sig))
    spec_half = int(np.ceil(4 * np.hypot(p.dye_sd_nm / p.nm_per_px, sig)))
    pad = spec_half + 2
    by_frame = emissions.groupby("frame").indices
    cols = emissions[["x", "y", "spot_photons", "spectrum_photons", "sc_true_nm"]]
    for f in range(1, p.frames + 1):
        idx = by_frame.get(f)
        em = cols.iloc[idx] if idx is not None else cols.iloc[:0]
        expected = _render_frame(p, em, pad, spot_half, spec_half)[pad:-pad, pad:-pad]
        counts = rng.poisson(expected).astype(np.float64)
        if p.camera_type == "emccd":  # electron multiplication: Gamma(n, 1) per pixel
            counts = rng.gamma(counts, 1.0)
        adu = p.gain * counts + p.offset_adu + rng.normal(0.0, p.read_noise_adu, counts.shape)
        yield np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def localizer_table(
    p: SimulationParams, emissions: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """What a localizer would report: detected emissions with position noise, plus false hits.

    Columns (px, photons): ``frame`` (1-based), ``x``, ``y``, ``signal``, ``background``,
    ``precision_px``, ``true_index`` (row in ``emissions``; -1 for false detections).
    """
    det = emissions[emissions["spot_photons"] >= p.detection_threshold_photons]
    n_spot = det["spot_photons"].to_numpy()
    s2 = p.psf_sigma_px**2 + 1 / 12
    # Thompson/Mortensen-like precision with background
    prec = np.sqrt(s2 / n_spot * (16 / 9 + 8 * np.pi * s2 * p.background_photons / n_spot))
    true = pd.DataFrame(
        {
            "frame": det["frame"].to_numpy(),
            "x": det["x"].to_numpy() + rng.normal(0, 1, len(det)) * prec,
            "y": det["y"].to_numpy() + rng.normal(0, 1, len(det)) * prec,
            "signal": n_spot * (1 + rng.normal(0, 0.1, len(det))),
            "background": p.background_photons * (1 + rng.normal(0, 0.05, len(det))),
            "precision_px": prec,
            "true_index": det.index.to_numpy(),
        }
    )
    n_false = int(round(p.false_detection_fraction * len(det)))
    x0, x1 = p.spot_region_x
    false = pd.DataFrame(
        {
            "frame": rng.integers(1, p.frames + 1, n_false),
            "x": rng.uniform(x0, x1, n_false),
            "y": rng.uniform(p.margin_px, p.height - p.margin_px, n_false),
            "signal": rng.uniform(0.05, 0.5, n_false) * p.mean_photons,
            "background": p.background_photons * (1 + rng.normal(0, 0.05, n_false)),
            "precision_px": rng.uniform(0.1, 0.3, n_false),
            "true_index": -1,
        }
    )
    out = pd.concat([true, false], ignore_index=True)
    return out.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)


def peakfit_text(table: pd.DataFrame, p: SimulationParams, name: str, pixel_size_nm: float) -> str:
    """Format a localizer table as a GDSC SMLM PeakFit V2 text results file (``#`` header)."""
    orig_x = np.floor(table["x"]).astype(int)
    orig_y = np.floor(table["y"]).astype(int)
    sd = p.psf_sigma_px
    cols = {
        "Frame": table["frame"].astype(int),
        "origX": orig_x,
        "origY": orig_y,
        "origValue": np.round(table["signal"] / (2 * np.pi * sd**2) + table["background"], 1),
        "Error": 0.0,
        "Noise": np.round(np.sqrt(table["background"]), 3),
        "Background": np.round(table["background"], 3),
        "Signal": np.round(table["signal"], 2),
        "Angle": 0.0,
        "X": np.round(table["x"], 4),
        "Y": np.round(table["y"], 4),
        "X SD": sd,
        "Y SD": sd,
        "Precision": np.round(table["precision_px"] * pixel_size_nm, 3),
    }
    body = pd.DataFrame(cols).to_csv(sep="\t", index=False, header=False, lineterminator="\n")
    header = [
        "#Localisation Results File",
        "#FileVersion Text.D0.E0.V2",
        f"#Name {name} (simulated by srsmlm)",
        f"#Source <simulated>{p.width}x{p.height}x{p.frames}</simulated>",
        f"#Calibration <gain>{p.gain}</gain><nmPerPixel>{pixel_size_nm}</nmPerPixel>",
        "#Configuration <srsmlm.simulate/>",
        "#" + "\t".join(cols),
    ]
    return "\n".join(header) + "\n" + body


def thunderstorm_table(
    table: pd.DataFrame, p: SimulationParams, pixel_size_nm: float
) -> pd.DataFrame:
    """Format a localizer table as a ThunderSTORM CSV export (positions in nm)."""
    return pd.DataFrame(
        {
            "id": np.arange(1, len(table) + 1),
            "frame": table["frame"].astype(int),
            "x [nm]": np.round(table["x"] * pixel_size_nm, 2),
            "y [nm]": np.round(table["y"] * pixel_size_nm, 2),
            "sigma [nm]": round(p.psf_sigma_px * pixel_size_nm, 2),
            "intensity [photon]": np.round(table["signal"], 2),
            "offset [photon]": np.round(table["background"], 2),
            "bkgstd [photon]": np.round(np.sqrt(table["background"]), 3),
            "uncertainty [nm]": np.round(table["precision_px"] * pixel_size_nm, 3),
        }
    )


def simulate_acquisition(
    params: SimulationParams,
    seed: int,
    name: str,
    stack_path: str | Path,
    peakfit_path: str | Path,
    thunderstorm_path: str | Path,
    truth_path: str | Path,
    pixel_size_nm: float,
) -> dict[str, int]:
    """Simulate one acquisition and write stack, both localization tables and the truth table."""
    p = params
    rng = acquisition_seed(seed, name, "simulate")
    emissions = draw_emissions(p, rng)
    log.info(
        "%s: %d molecules, %d emission events over %d frames",
        name,
        p.n_molecules,
        len(emissions),
        p.frames,
    )
    frame_rng = acquisition_seed(seed, name, "camera")
    with atomic_path(stack_path) as tmp:
        with tifffile.TiffWriter(tmp, ome=True) as tif:
            tif.write(
                render_frames(p, emissions, frame_rng),
                shape=(p.frames, p.height, p.width),
                dtype=np.uint16,
                photometric="minisblack",
                metadata={"axes": "TYX", "UUID": stack_uuid(seed, name)},
            )
    table = localizer_table(p, emissions, acquisition_seed(seed, name, "localizer"))
    with atomic_path(peakfit_path) as tmp:
        tmp.write_text(peakfit_text(table, p, name, pixel_size_nm))
    write_csv(thunderstorm_table(table, p, pixel_size_nm), thunderstorm_path)
    truth = emissions.copy()
    truth.index.name = "emission"
    truth = truth.reset_index()
    loc_rows = table[table["true_index"] >= 0]
    truth["loc_x"] = np.nan
    truth["loc_y"] = np.nan
    truth.loc[loc_rows["true_index"].to_numpy(), "loc_x"] = loc_rows["x"].to_numpy()
    truth.loc[loc_rows["true_index"].to_numpy(), "loc_y"] = loc_rows["y"].to_numpy()
    truth["detected"] = truth["loc_x"].notna()
    write_csv(truth, truth_path)
    n_false = int((table["true_index"] < 0).sum())
    log.info(
        "%s: wrote %d localizations (%d false detections), stack %s",
        name,
        len(table),
        n_false,
        stack_path,
    )
    return {"emissions": len(emissions), "localizations": len(table), "false": n_false}


def write_micromanager_series(
    frames: Iterator[np.ndarray],
    shape: tuple[int, int, int],
    first_path: str | Path,
    frames_per_file: int,
    seed: int = 0,
) -> list[Path]:
    """Write a uint16 stack split over several OME-TIFF files as Micro-Manager does
    (``X_MMStack_Pos0.ome.tif``, ``X_MMStack_Pos0_1.ome.tif``, ...), every file carrying the
    OME-XML that maps all frames to their file. Returns the file paths (the first opens all)."""
    first_path = Path(first_path)
    n, h, w = shape
    stem = (
        first_path.name[: -len(".ome.tif")]
        if first_path.name.endswith(".ome.tif")
        else first_path.stem
    )
    bounds = [(a, min(a + frames_per_file, n)) for a in range(0, n, frames_per_file)]
    names = [f"{stem}.ome.tif" if i == 0 else f"{stem}_{i}.ome.tif" for i in range(len(bounds))]
    ids = [stack_uuid(seed, name) for name in names]
    planes = "".join(
        f'<TiffData FirstT="{t}" FirstZ="0" FirstC="0" IFD="{t - a}" PlaneCount="1">'
        f'<UUID FileName="{names[i]}">urn:uuid:{ids[i]}</UUID></TiffData>'
        for i, (a, b) in enumerate(bounds)
        for t in range(a, b)
    )

    def ome(i: int) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{ids[i]}">'
            f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" '
            f'SizeX="{w}" SizeY="{h}" SizeC="1" SizeZ="1" SizeT="{n}">'
            '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>' + planes + "</Pixels></Image></OME>"
        )

    paths = [first_path.with_name(nm) for nm in names]
    it = iter(frames)
    for i, (a, b) in enumerate(bounds):
        with atomic_path(paths[i]) as tmp, tifffile.TiffWriter(tmp) as tif:
            for t in range(a, b):
                tif.write(
                    next(it),
                    description=ome(i) if t == a else None,
                    metadata=None,
                    contiguous=False,
                    photometric="minisblack",
                )
    return paths
