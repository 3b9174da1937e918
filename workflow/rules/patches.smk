rule extract_patches:
    input:
        clusters="results/{acquisition}/clusters.csv",
        localizations="results/{acquisition}/localizations.csv",
        stack=raw_stack,
    output:
        raw="results/{acquisition}/patches/raw.tif",
        clean="results/{acquisition}/patches/clean.tif",
        table="results/{acquisition}/patches/patches.csv",
    log:
        "logs/{acquisition}/extract_patches.log",
    benchmark:
        "benchmarks/{acquisition}/extract_patches.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        geometry=config["geometry"],
        patches=config["patches"],
        min_run_length=config["clustering"]["min_run_length"],
        seed=config["seed"],
        target_model=target_model_config(),
    script:
        "../../scripts/extract_patches.py"


rule build_dataset:
    input:
        raw=expand("results/{acquisition}/patches/raw.tif", acquisition=TRAIN),
        clean=expand("results/{acquisition}/patches/clean.tif", acquisition=TRAIN),
        tables=expand("results/{acquisition}/patches/patches.csv", acquisition=TRAIN),
    output:
        train="results/dataset/train.npz",
        test="results/dataset/test.npz",
        index="results/dataset/index.csv",
    log:
        "logs/build_dataset.log",
    benchmark:
        "benchmarks/build_dataset.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        acquisitions=TRAIN,
        split=config["split"],
        seed=config["seed"],
    script:
        "../../scripts/build_dataset.py"
