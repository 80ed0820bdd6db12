"""Kiln: build models into fast, checked artifacts and serve them over KServe V2 / Triton protocols."""

__version__ = "0.1.0"
