rule simulate:
    output:
        stack="results/simulated/{sim}/stack.ome.tif",
        peakfit="results/simulated/{sim}/peakfit.results.xls",
        thunderstorm="results/simulated/{sim}/thunderstorm.csv",
        truth="results/simulated/{sim}/truth.csv",
    log:
        "logs/simulate/{sim}.log",
    benchmark:
        "benchmarks/{sim}/simulate.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        simulation=simulation_params,
        geometry=config["geometry"],
        seed=config["seed"],
    script:
        "../../scripts/simulate.py"
