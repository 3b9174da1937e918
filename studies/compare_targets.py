"""Compare finished demo runs (clean targets, seeds) from their evaluation outputs (no computation
of its own): README's table of the denoised readouts against the raw ones, by signal quarter and
by dye, and the spread of the denoised fit's median error over seeds.

    python studies/compare_targets.py LABEL=WORKDIR [LABEL=WORKDIR ...] [--seeds WORKDIR ...]

Each WORKDIR holds a finished ``snakemake`` run (``results/evaluation/sc_errors.csv``,
``metrics.json`` and ``test_metrics.json``). Raw readouts are printed once, from the first run
(they do not depend on the target or the network).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

RAW = [
    ("raw, maximum likelihood, trusted", "raw_mle_trusted"),
    ("raw, maximum likelihood, all", "raw_mle"),
    ("raw, least-squares fit", "raw_gaussian_fit"),
]
DENOISED = [("centroid", "denoised_centroid"), ("least-squares fit", "denoised_gaussian_fit")]
PAIRED_KEYS = ("denoised_gaussian_fit_paired", "raw_gaussian_fit_paired")
PAIRED = [
    ("head to head ({target}): raw least-squares fit", "raw_gaussian_fit_paired"),
    ("head to head ({target}): denoised least-squares fit", "denoised_gaussian_fit_paired"),
]


def cell(row: pd.Series) -> str:
    return f"{row['median_abs_error_nm']:.2f} / {row['rmse_nm']:.2f}"


def table(runs: dict[str, Path]) -> str:
    errors = {
        label: pd.read_csv(wd / "results/evaluation/sc_errors.csv") for label, wd in runs.items()
    }
    ref = errors[next(iter(runs))]
    quarters = ref[(ref["by"] == "signal_bin") & (ref["estimator"] == "raw_gaussian_fit")]
    head = [f"signal {q.signal_min:.0f}-{q.signal_max:.0f}" for q in quarters.itertuples()]
    lines = [
        "| readout | " + " | ".join(head) + " | all | bias by dye (nm) |",
        "|---" * (len(head) + 3) + "|",
    ]
    metrics = {
        label: json.loads((wd / "results/evaluation/metrics.json").read_text())
        for label, wd in runs.items()
    }

    def row(label: str, df: pd.DataFrame, m: dict, est: str) -> str:
        q = df[(df["by"] == "signal_bin") & (df["estimator"] == est)].sort_values("group")
        s = m["sc_error"][est]
        bias = ", ".join(f"{v:+.2f}" for v in s["bias_by_true_dye_nm"].values())
        return (
            f"| {label} | "
            + " | ".join(cell(r) for _, r in q.iterrows())
            + f" | {s['median_abs_error_nm']:.2f} / {s['rmse_nm']:.2f} | {bias} |"
        )

    for label, est in RAW:
        lines.append(row(label, ref, metrics[next(iter(runs))], est))
    for target, df in errors.items():
        for label, est in DENOISED:
            lines.append(row(f"denoised ({target} targets), {label}", df, metrics[target], est))
    for target, df in errors.items():  # head to head: the localizations both fits read
        if "denoised_gaussian_fit_paired" in metrics[target]["sc_error"]:
            for label, est in PAIRED:
                lines.append(row(label.format(target=target), df, metrics[target], est))
    return "\n".join(lines)


def shift(wd: Path) -> str:
    t = json.loads((wd / "results/evaluation/test_metrics.json").read_text())
    s = t.get("spectral_shift_nm")
    if not s:
        return "n/a"
    parts = ", ".join(f"{b['median_nm']:+.2f}" for b in s["by_position"])
    fine = ", ".join(f"{b['median_nm']:+.2f}" for b in s.get("by_box_px", []))
    return (
        f"median {s['median_nm']:+.2f} nm (blue/middle/red third of the box: {parts}; "
        f"6-px bins: {fine})"
    )


def main(argv: list[str]) -> None:
    seeds: list[Path] = []
    if "--seeds" in argv:
        i = argv.index("--seeds")
        seeds = [Path(a) for a in argv[i + 1 :]]
        argv = argv[:i]
    runs = {a.split("=", 1)[0]: Path(a.split("=", 1)[1]) for a in argv}
    print("median / RMSE of |error| (nm) against the truth, demo_unseen\n")
    print(table(runs))
    print()
    for label, wd in runs.items():
        print(f"network shift against its targets ({label}): {shift(wd)}")
    if seeds:
        print("\nseeds (denoised least-squares fit):")
        medians, ratios = [], []
        for wd in seeds:
            m = json.loads((wd / "results/evaluation/metrics.json").read_text())
            s = m["sc_error"]["denoised_gaussian_fit"]
            r = m["sc_error"]["raw_gaussian_fit"]
            medians.append(s["median_abs_error_nm"])
            ratios.append(s["median_abs_error_nm"] / r["median_abs_error_nm"])
            bias = ", ".join(f"{v:+.2f}" for v in s["bias_by_true_dye_nm"].values())
            print(
                f"  {wd}: median {s['median_abs_error_nm']:.2f} nm, RMSE {s['rmse_nm']:.2f} nm, "
                f"bias by dye {bias}; raw least-squares fit median {r['median_abs_error_nm']:.2f}, "
                f"RMSE {r['rmse_nm']:.2f}; {shift(wd)}"
            )
            if "denoised_gaussian_fit_paired" in m["sc_error"]:
                d, rr = (m["sc_error"][k] for k in PAIRED_KEYS)
                print(
                    f"    head to head ({d['n']} localizations both read): denoised "
                    f"{d['median_abs_error_nm']:.2f} / {d['rmse_nm']:.2f} nm against raw "
                    f"{rr['median_abs_error_nm']:.2f} / {rr['rmse_nm']:.2f} nm (median / RMSE); "
                    f"beats it in both: {m.get('denoised_fit_beats_raw_fit_paired')}"
                )
        lo, hi = min(medians), max(medians)
        mean = sum(medians) / len(medians)
        print(
            f"  spread of the median: {lo:.2f}-{hi:.2f} nm, (max - min) / mean = {(hi - lo) / mean:.1%}"
        )
        rlo, rhi = min(ratios), max(ratios)
        print(
            f"  median relative to the raw least-squares fit of the same data: {rlo:.2f}-{rhi:.2f}, "
            f"(max - min) / mean = {(rhi - rlo) / (sum(ratios) / len(ratios)):.1%}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
