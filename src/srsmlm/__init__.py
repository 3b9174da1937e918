"""srsmlm: deep-learning denoising for spectrally resolved SMLM.

All pipeline logic lives here as plain functions; the Snakemake workflow only adapts
``snakemake.*`` objects to calls into this package. Only :mod:`srsmlm.model`,
:mod:`srsmlm.training` and :mod:`srsmlm.inference` import TensorFlow.
"""

__version__ = "0.1.0"
