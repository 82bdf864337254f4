"""The quantize stage: a quantization method applied to a ColQwen3 checkpoint's decoder blocks, as a cached artifact.

    stage.py        quantize(job): reuse the complete artifact of the key, or calibrate then build, under its lock
    methods/        one folder per method (spec + build), chosen by `quant.method`: autoround
    build.py        one build, whatever the method: the method's run, its export collected, the manifest
    calibration.py  the calibration text: pinned, loaded, selected like auto-round, handed over as .jsonl
    export.py       a method's export turned into a self-contained Tomoro-layout checkpoint
    artifacts.py    the on-disk cache: manifest, verification, clean-up of incomplete builds, key lock
    kernels.py      the load-back kernels (one table) and how `quant.backend=auto` picks one
    load.py         loading an export back with those kernels or dequantized, strictly
    dequant.py      our own unpacking of packed int weights
    tensors.py      what a quantized checkpoint holds, read from its headers
    sizes.py        bytes on disk and parameters by precision
    errors.py       CalibrationError, QuantizationError, BackendUnavailableError

Nothing is imported here: `import colq_sweep.quantize.kernels` (which the config's validation needs) must not pull
in the stage. The identity of an artifact (its key) is computed in colq_sweep/keys.py with every other identity.
"""
