rule train_unet:
    input:
        train="results/dataset/train.npz",
        index="results/dataset/index.csv",
    output:
        model="results/model/unet.keras",
        meta="results/model/model.json",
        history="results/model/history.csv",
    log:
        "logs/train_unet.log",
    benchmark:
        "benchmarks/train_unet.tsv"
    conda:
        backend_env()
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        backend=config["training"]["backend"],
        geometry=config["geometry"],
        model=config["model"],
        training=config["training"],
        normalisation=normalisation(),
        seed=config["seed"],
        checkpoint_dir="results/model/checkpoint",
    script:
        "../../scripts/train_unet.py"


rule evaluate_test:
    input:
        test="results/dataset/test.npz",
        model="results/model/unet.keras",
        meta="results/model/model.json",
    output:
        metrics="results/evaluation/test_metrics.json",
        predictions="results/evaluation/test_predictions.npz",
    log:
        "logs/evaluate_test.log",
    benchmark:
        "benchmarks/evaluate_test.tsv"
    conda:
        backend_env()
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        backend=config["training"]["backend"],
        geometry=config["geometry"],
        batch_size=config["inference"]["batch_size"],
        nm_per_px=config["spectra"]["nm_per_px"],
    script:
        "../../scripts/evaluate_test.py"


rule denoise_acquisition:
    input:
        localizations="results/{acquisition}/localizations.csv",
        stack=raw_stack,
        model="results/model/unet.keras",
        meta="results/model/model.json",
    output:
        raw="results/{acquisition}/denoised/raw.tif",
        denoised="results/{acquisition}/denoised/denoised.tif",
        table="results/{acquisition}/denoised/patches.csv",
        skipped="results/{acquisition}/denoised/skipped.csv",
    log:
        "logs/{acquisition}/denoise_acquisition.log",
    benchmark:
        "benchmarks/{acquisition}/denoise_acquisition.tsv"
    conda:
        backend_env()
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        backend=config["training"]["backend"],
        geometry=config["geometry"],
        batch_size=config["inference"]["batch_size"],
        chunk_size=config["patches"]["chunk_size"],
        shifts=config["inference"]["shifts_px"],
        profile_rows=config["spectra"]["profile_rows"],
    script:
        "../../scripts/denoise_acquisition.py"
