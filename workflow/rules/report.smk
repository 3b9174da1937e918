rule plot_report:
    input:
        predictions="results/evaluation/test_predictions.npz",
        index="results/dataset/index.csv",
        history="results/model/history.csv",
        test_metrics="results/evaluation/test_metrics.json",
        spectra=expand("results/{acquisition}/spectra.csv", acquisition=APPLY),
        precision=expand(
            "results/{acquisition}/spectral_precision.csv", acquisition=APPLY
        ),
        truth=[truth_table(a) for a in EVALUATED],
        metrics=evaluation_metrics(),
        raw=expand("results/{acquisition}/denoised/raw.tif", acquisition=APPLY),
        molecules=expand("results/{acquisition}/molecules.csv", acquisition=APPLY),
        joint_fits=expand("results/{acquisition}/joint_fits.npz", acquisition=APPLY),
    output:
        montage=report(
            "results/report/montage.png",
            category="1. Patches",
            caption="../report/montage.rst",
        ),
        loss=report(
            "results/report/loss.png",
            category="2. Training",
            caption="../report/loss.rst",
        ),
        histograms=report(
            "results/report/sc_histograms.png",
            category="3. Spectra",
            caption="../report/histograms.rst",
        ),
        precision=report(
            "results/report/precision.png",
            category="3. Spectra",
            caption="../report/precision.rst",
        ),
        rendering=report(
            "results/report/rendering.png",
            category="4. Images",
            caption="../report/rendering.rst",
        ),
        evaluation=report(
            "results/report/evaluation.png",
            category="5. Evaluation",
            caption="../report/evaluation.rst",
        ),
        mle_error=report(
            "results/report/mle_error_vs_crlb.png",
            category="6. MLE readout",
            caption="../report/mle_error_vs_crlb.rst",
        ),
        mle_efficiency=report(
            "results/report/mle_efficiency.png",
            category="6. MLE readout",
            caption="../report/mle_efficiency.rst",
        ),
        flagged=report(
            "results/report/flagged_examples.png",
            category="6. MLE readout",
            caption="../report/flagged_examples.rst",
        ),
        joint_fits=report(
            "results/report/joint_fits.png",
            category="6. MLE readout",
            caption="../report/joint_fits.rst",
        ),
        molecules=report(
            "results/report/molecules.png",
            category="6. MLE readout",
            caption="../report/molecules.rst",
        ),
        summary="results/report/summary.json",
    log:
        "logs/plot_report.log",
    benchmark:
        "benchmarks/plot_report.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        render=config["report"],
        evaluated=EVALUATED,
        seed=config["seed"],
        signal_bins=config["spectra"]["signal_bins"],
    script:
        "../../scripts/plot_report.py"
