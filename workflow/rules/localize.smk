rule filter_localizations:
    input:
        table=localization_table,
    output:
        "results/{acquisition}/localizations.csv",
    log:
        "logs/{acquisition}/filter_localizations.log",
    benchmark:
        "benchmarks/{acquisition}/filter_localizations.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        format=table_format,
        pixel_size_nm=pixel_size,
        filter=config["filter"],
    script:
        "../../scripts/filter_localizations.py"


rule cluster_localizations:
    input:
        "results/{acquisition}/localizations.csv",
    output:
        "results/{acquisition}/clusters.csv",
    log:
        "logs/{acquisition}/cluster_localizations.log",
    benchmark:
        "benchmarks/{acquisition}/cluster_localizations.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        clustering=config["clustering"],
    script:
        "../../scripts/cluster_localizations.py"
