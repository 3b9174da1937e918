# Config validation, the acquisitions sheet and input functions.
import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from srsmlm.errors import InputError
from srsmlm.plan import TARGETS
from srsmlm.sheet import load_sheet, names_with_role
from srsmlm.stack import NORMALISATION
from srsmlm.targets import SPECTRA_KEYS as TARGET_SPECTRA_KEYS

validate(config, schema="../schemas/config.schema.yaml", set_default=True)

try:
    SHEET = load_sheet(config["acquisitions"])
except InputError as exc:
    raise WorkflowError(str(exc))

ACQUISITIONS = SHEET.index.tolist()
TRAIN = names_with_role(SHEET, "train")
APPLY = names_with_role(SHEET, "apply")
SIMULATED = list(config["simulation"]["acquisitions"])


def truth_table(name):
    """The simulator's truth for an acquisition whose stack is a simulated one, else None."""
    for sim in SIMULATED:
        if SHEET.loc[name, "stack"] == f"results/simulated/{sim}/stack.ome.tif":
            return f"results/simulated/{sim}/truth.csv"
    return None


EVALUATED = [a for a in APPLY if truth_table(a)]


wildcard_constraints:
    acquisition="|".join(ACQUISITIONS),
    sim="|".join(SIMULATED) if SIMULATED else "(?!)",


def final_outputs():
    """Everything `snakemake` builds by default."""
    outputs = expand("results/{acquisition}/clusters.csv", acquisition=ACQUISITIONS)
    if TRAIN:
        outputs += ["results/model/unet.keras", "results/evaluation/test_metrics.json"]
        outputs += expand("results/{acquisition}/spectra.csv", acquisition=APPLY)
        if APPLY:
            outputs += ["results/report/summary.json"]
        outputs += evaluation_metrics()
    return outputs


def target_model_config():
    """The config the model targets read (camera: and the fit keys of spectra:), only when
    patches.target is model: other changes there do not rerun the patch stage."""
    if config["patches"]["target"] != "model":
        return None
    spectra = {key: config["spectra"][key] for key in TARGET_SPECTRA_KEYS}
    return {"spectra": spectra, "camera": config["camera"]}


def acquisition(wildcards):
    return SHEET.loc[wildcards.acquisition]


def localization_table(wildcards):
    return acquisition(wildcards)["localizations"]


def raw_stack(wildcards):
    return acquisition(wildcards)["stack"]


def table_format(wildcards):
    return acquisition(wildcards)["format"]


def pixel_size(wildcards):
    value = acquisition(wildcards)["pixel_size_nm"]
    return None if pd.isna(value) else float(value)


def simulation_params(wildcards):
    """The simulation section for one simulated acquisition (its own photon budget only)."""
    sim = {k: v for k, v in config["simulation"].items() if k != "acquisitions"}
    sim["mean_photons"] = config["simulation"]["acquisitions"][wildcards.sim]
    sim["camera"] = config["camera"]  # the readout's camera is the simulator's
    return sim


def normalisation():
    """How patches are scaled and what the targets are (patches.target), recorded beside the
    model weights."""
    target = config["patches"]["target"]
    return {
        "input": "raw camera counts / 2**16 (no offset subtraction)",
        "input_divisor": NORMALISATION,
        "target": target,
        "target_description": f"{TARGETS[target]}; parts / max (spectral / (amp_factor x max)); white top-hat",
        "amp_factor": config["patches"]["amp_factor"],
        "tophat_radius": config["patches"]["tophat_radius"],
        "target_max": config["patches"]["target_max"],
    }


def evaluation_metrics():
    """The ground-truth evaluation, when any applied acquisition is simulated."""
    return ["results/evaluation/metrics.json"] if EVALUATED else []


def backend_env():
    """The conda environment of the training and inference rules: that of training.backend."""
    return f"../../envs/{config['training']['backend']}.yaml"
