"""Snakemake adapter: simulate one demo acquisition (srsmlm.simulate)."""

from srsmlm.geometry import Geometry
from srsmlm.logs import run_step
from srsmlm.simulate import SimulationParams, simulate_acquisition

sim = snakemake.params.simulation
geometry = Geometry.from_config(snakemake.params.geometry)
run_step(
    snakemake.log[0],
    simulate_acquisition,
    params=SimulationParams.from_config(sim, geometry, sim["mean_photons"]),
    seed=snakemake.params.seed,
    name=snakemake.wildcards.sim,
    stack_path=snakemake.output.stack,
    peakfit_path=snakemake.output.peakfit,
    thunderstorm_path=snakemake.output.thunderstorm,
    truth_path=snakemake.output.truth,
    pixel_size_nm=sim["pixel_size_nm"],
)
