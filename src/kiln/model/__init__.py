"""One loaded model version: the completed config, its instances, request checks, classification, warm-up."""

from kiln.model.version import Model, PreparedRequest, TensorSpec

__all__ = ["Model", "PreparedRequest", "TensorSpec"]
