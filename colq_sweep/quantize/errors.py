"""The two ways the quantize stage refuses: a result that is not what the config asked for, or a backend that
cannot serve the checkpoint here. Both are raised before anything wrong is used."""

from __future__ import annotations


class QuantizationError(RuntimeError):
    """Quantization produced something other than what the config asked for."""


class BackendUnavailableError(RuntimeError):
    """The requested inference backend cannot serve this checkpoint on this machine."""
