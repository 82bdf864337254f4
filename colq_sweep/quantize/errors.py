"""The ways the quantize stage refuses: calibration data that cannot give what the config asks for, a result that
is not what the config asked for, or a backend that cannot serve the checkpoint here. Each is raised before anything
wrong is used."""

from __future__ import annotations


class QuantizationError(RuntimeError):
    """Quantization produced something other than what the config asked for."""


class BackendUnavailableError(RuntimeError):
    """The requested inference backend cannot serve this checkpoint on this machine."""


class CalibrationError(RuntimeError):
    """Calibration data cannot give what the config asks for (too few usable samples, missing field, no pin, ...)."""
