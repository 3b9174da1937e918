rule spectra:
    input:
        table="results/{acquisition}/denoised/patches.csv",
        raw="results/{acquisition}/denoised/raw.tif",
        denoised="results/{acquisition}/denoised/denoised.tif",
        clusters="results/{acquisition}/clusters.csv",
        stack=raw_stack,
    output:
        spectra="results/{acquisition}/spectra.csv",
        precision="results/{acquisition}/spectral_precision.csv",
        molecules="results/{acquisition}/molecules.csv",
        joint_fits="results/{acquisition}/joint_fits.npz",
    log:
        "logs/{acquisition}/spectra.log",
    benchmark:
        "benchmarks/{acquisition}/spectra.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        geometry=config["geometry"],
        spectra=config["spectra"],
        camera=config["camera"],
        seed=config["seed"],
    script:
        "../../scripts/spectra.py"


rule evaluate:
    input:
        spectra=expand("results/{acquisition}/spectra.csv", acquisition=EVALUATED),
        molecules=expand("results/{acquisition}/molecules.csv", acquisition=EVALUATED),
        truth=[truth_table(a) for a in EVALUATED],
    output:
        metrics="results/evaluation/metrics.json",
        table="results/evaluation/sc_errors.csv",
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        acquisitions=EVALUATED,
        signal_bins=config["spectra"]["signal_bins"],
        tolerance_nm=config["spectra"]["tolerance_nm"],
    script:
        "../../scripts/evaluate.py"
