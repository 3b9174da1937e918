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
    script:
        "../../scripts/plot_report.py"
