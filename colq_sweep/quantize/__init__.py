"""The quantize stage: AutoRound W4A16 of a ColQwen3 checkpoint's decoder blocks, as a cached artifact.

    stage.py        quantize_point: reuse the complete artifact of the key, or calibrate then build, under its lock
    calibration.py  the calibration text: load, select like auto-round, count what is used, hand over as .jsonl
    build.py        one AutoRound run on that calibration, exported, with its manifest
    export.py       auto-round's export turned into a self-contained Tomoro-layout checkpoint
    artifacts.py    the on-disk cache: manifest, verification, clean-up of incomplete builds, key lock
    load.py         loading an export back with real kernels (ark / gptqmodel) or dequantized, strictly
    dequant.py      our own unpacking of packed int weights
    tensors.py      what a quantized checkpoint holds, read from its headers
    sizes.py        bytes on disk and parameters by precision
    errors.py       QuantizationError, BackendUnavailableError

The identity of an artifact (its key) is computed in colq_sweep/keys.py with every other identity.
"""

from colq_sweep.quantize.artifacts import QuantArtifact
from colq_sweep.quantize.errors import BackendUnavailableError, QuantizationError
from colq_sweep.quantize.load import load_quantized, resolve_backend
from colq_sweep.quantize.sizes import checkpoint_bytes, size_report
from colq_sweep.quantize.stage import quantize_point

__all__ = [
    "BackendUnavailableError",
    "QuantArtifact",
    "QuantizationError",
    "checkpoint_bytes",
    "load_quantized",
    "quantize_point",
    "resolve_backend",
    "size_report",
]
