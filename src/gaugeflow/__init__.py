"""gaugeflow: normalizing flows for the 2D Schwinger model (arXiv:2308.13294 rebuilt)."""

__version__ = "0.1.0"
