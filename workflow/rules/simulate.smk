rule simulate:
    output:
        stack="results/simulated/{sim}/stack.ome.tif",
        peakfit="results/simulated/{sim}/peakfit.results.xls",
        thunderstorm="results/simulated/{sim}/thunderstorm.csv",
        truth="results/simulated/{sim}/truth.csv",
    params:
        simulation=simulation_params,
        geometry=config["geometry"],
        seed=config["seed"],
    log:
        "logs/simulate/{sim}.log",
    benchmark:
        "benchmarks/{sim}/simulate.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../../scripts/simulate.py"
