"""Print the README's demo figures from one finished demo run (no computation of its own).

    python studies/demo_summary.py [WORKDIR]

Reads ``WORKDIR/benchmarks/**/*.tsv`` (Snakemake's per-rule wall time and peak RSS),
``results/evaluation/metrics.json``, ``test_metrics.json``, ``results/model/history.csv`` and
the inference log, and prints Markdown tables, so every figure in README comes from one run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

ROWS = [
    ("raw patch, centroid", "raw_centroid"),
    ("raw patch, least-squares Gaussian fit", "raw_gaussian_fit"),
    ("raw counts, maximum likelihood, all", "raw_mle"),
    ("**raw counts, maximum likelihood, trusted**", "raw_mle_trusted"),
    ("denoised, centroid", "denoised_centroid"),
    ("denoised, least-squares Gaussian fit", "denoised_gaussian_fit"),
    ("**per molecule, joint fit** (one value per run)", "molecule_joint"),
    ("per molecule, inverse-variance mean", "molecule_mean"),
]


def rule_times(wd: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted(wd.glob("benchmarks/**/*.tsv")):
        b = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "job": str(tsv.relative_to(wd / "benchmarks"))[:-4],
                "s": float(b["s"].iloc[-1]),
                "max_rss_mb": float(b["max_rss"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def error_table(metrics: dict) -> str:
    lines = [
        "| estimator | n | valid | bias (nm) | RMSE (nm) | median abs. error (nm) | within 5 nm | bias by dye (nm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in ROWS:
        s = metrics["sc_error"].get(key)
        if s is None:
            continue
        dyes = ", ".join(f"{v:+.2f}" for v in s["bias_by_true_dye_nm"].values())
        lines.append(
            f"| {label} | {s['n']:,} | {100 * s['valid_fraction']:.1f} % | {s['bias_nm']:+.2f} | {s['rmse_nm']:.2f} | "
            f"{s['median_abs_error_nm']:.2f} | {100 * s['within_tolerance']:.1f} % | {dyes} |"
        )
    return "\n".join(lines)


def main() -> None:
    wd = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    times = rule_times(wd)
    print(times.to_string(index=False))
    print(
        f"\nsum of rule wall times: {times['s'].sum():.0f} s; peak RSS {times['max_rss_mb'].max():.0f} MB"
    )
    metrics = json.loads((wd / "results/evaluation/metrics.json").read_text())
    test = json.loads((wd / "results/evaluation/test_metrics.json").read_text())
    hist = pd.read_csv(wd / "results/model/history.csv")
    print(
        f"\ntest set: network MSE {test['network']['mse']:.4f} vs raw {test['raw_scaled']['mse']:.4f}; "
        f"{len(hist)} epochs, val_loss {hist['val_loss'].iloc[0]:.4f} -> {hist['val_loss'].min():.4f}"
    )
    log = (wd / "logs/demo_unseen/denoise_acquisition.log").read_text()
    rates = re.findall(r"\(([\d.]+) patches/s\)", log)
    if rates:
        print(f"inference: {rates[-1]} patches/s in the loop")
    print(f"\nmatched localizations: {metrics['matched_localizations']:,}\n")
    print(error_table(metrics))
    if "mle" in metrics:
        q = metrics["mle"]
        flags = ", ".join(f"{k} {100 * v:.1f} %" for k, v in q["flagged_fraction"].items())
        print(f"\nflagged: {flags}")
        print(
            f"efficiency {q['efficiency']:.2f}; coverage 1x {100 * q['coverage_1x']:.1f} %, "
            f"2x {100 * q['coverage_2x']:.1f} %"
        )
        for b in q["by_signal_bin"]:
            print(
                f"  signal {b['signal_min']:.0f}-{b['signal_max']:.0f}: {b['n_trusted']} trusted, "
                f"bound {b['crlb_rmse_nm']:.2f} nm, observed {b['observed_rmse_nm']:.2f} nm, "
                f"efficiency {b['efficiency']:.2f}"
            )
    print(f"dye accuracy: {metrics['dye_accuracy']}")


if __name__ == "__main__":
    main()
