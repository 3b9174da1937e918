"""Report figures (matplotlib, no pyplot) and the summary of key numbers.

Every figure function returns a :class:`matplotlib.figure.Figure` (binned data, a note instead
of a failure when its data are missing); :func:`report_stage` writes them all. Modules, by what
they show:

* :mod:`.training`: test patches and loss curves;
* :mod:`.spectra`: spectral-centre histograms, spectral precision, rendering, molecules;
* :mod:`.mle`: the maximum-likelihood readout (flags, error vs CRLB, efficiency);
* :mod:`.examples`: raw patches per MLE flag;
* :mod:`.joint`: joint fits of overlapping spectra (data, model, residual);
* :mod:`.evaluation`: the error of every estimator against the ground truth;
* :mod:`.report`: loading the tables, the summary and the report stage;
* :mod:`.common`: what they share.
"""

from .common import save_figure
from .evaluation import ESTIMATOR_LABELS, evaluation_figure, evaluation_rows
from .examples import choose_examples, example_title, flagged_examples
from .mle import (
    flagged_fractions,
    mle_efficiency,
    mle_error_vs_crlb,
    mle_reasons,
    reason_order,
    trusted_mle,
)
from .report import (
    REPORT_FIGURES,
    load_molecules,
    load_report_data,
    load_spectra,
    report_stage,
    report_summary,
)
from .spectra import (
    molecule_error_by_signal,
    molecules_histogram,
    precision_figure,
    render_arrays,
    rendering,
    sc_histograms,
)
from .training import loss_curves, montage

__all__ = [
    "ESTIMATOR_LABELS",
    "REPORT_FIGURES",
    "choose_examples",
    "evaluation_figure",
    "evaluation_rows",
    "example_title",
    "flagged_examples",
    "flagged_fractions",
    "load_molecules",
    "load_report_data",
    "load_spectra",
    "loss_curves",
    "mle_efficiency",
    "mle_error_vs_crlb",
    "mle_reasons",
    "molecule_error_by_signal",
    "molecules_histogram",
    "montage",
    "precision_figure",
    "reason_order",
    "render_arrays",
    "rendering",
    "report_stage",
    "report_summary",
    "save_figure",
    "sc_histograms",
    "trusted_mle",
]
