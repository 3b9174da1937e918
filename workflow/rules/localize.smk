rule filter_localizations:
    input:
        table=localization_table,
    output:
        "results/{acquisition}/localizations.csv",
    params:
        format=table_format,
        pixel_size_nm=pixel_size,
        filter=config["filter"],
    log:
        "logs/{acquisition}/filter_localizations.log",
    benchmark:
        "benchmarks/{acquisition}/filter_localizations.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/filter_localizations.py"


rule cluster_localizations:
    input:
        "results/{acquisition}/localizations.csv",
    output:
        "results/{acquisition}/clusters.csv",
    params:
        clustering=config["clustering"],
    log:
        "logs/{acquisition}/cluster_localizations.log",
    benchmark:
        "benchmarks/{acquisition}/cluster_localizations.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/cluster_localizations.py"
