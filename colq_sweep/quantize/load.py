"""Loading a quantized export back, strictly, with the kernels the config asks for (the table of kernels and how
`auto` picks one: quantize/kernels.py).

A backend that cannot serve raises `BackendUnavailableError`; a load that leaves any tensor missing/unexpected,
any decoder Linear unquantized, or lands on auto-round's `auto_round:fake` fallback raises: auto-round would
otherwise happily run random weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from colq_sweep.quantize.dequant import dequantized_state_dict, load_dequantized
from colq_sweep.quantize.errors import BackendUnavailableError, QuantizationError
from colq_sweep.quantize.kernels import KERNELS, kernel_compute_dtype, resolve_backend
from colq_sweep.quantize.tensors import (
    packing_of,
    quant_config,
    quant_prefixes,
    read_safetensors_header,
    safetensors_files,
)

log = logging.getLogger(__name__)

# auto-round-lib's names for the dtypes its CPU kernels can compute in
_ARK_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def load_quantized(
    path: str | os.PathLike,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "bfloat16",
    compute: str = "activation",
):
    """Load a quantized export strictly with real kernels (ark / gptqmodel) or dequantized (dequant).

    `compute="activation"` (the default) makes the ark CPU kernels compute in `dtype`, like dequant does, and
    checks it on one layer; `compute="auto"` keeps auto-round-lib's per-CPU choice (see kernel_compute_dtype).
    """
    path = Path(path)
    device = str(device)
    qc = quant_config(path)
    packing = packing_of(qc)
    which = resolve_backend(backend, device, int(qc.get("bits", 4)))
    effective = kernel_compute_dtype(which, dtype, compute)
    kernel = KERNELS[which]
    if which == "dequant":
        model = load_dequantized(path, device, dtype)
    else:
        pin = _ark_compute_dtype(_ARK_DTYPES[dtype]) if which == "ark" and compute != "auto" else contextlib.nullcontext()
        with pin:
            model = load_with_autoround_backend(path, kernel.autoround_backend(packing), device, dtype, kernel.layer_module)
        if which == "ark" and compute != "auto":
            check_ark_compute(model, path, dtype)
    model.colq_backend = which
    model.colq_compute_dtype = effective
    log.info("loaded %s with backend=%s on %s (%s, computing in %s)", path, which, device, dtype, effective)
    return model


class _RepackWithComputeDtype:
    """Stands in for auto-round-lib's `ark` extension module during a layer's `post_init`: the same functions,
    but `repack_quantized_weight` packs for `compute_dtype` instead of the `"auto"` that post_init passes."""

    def __init__(self, ark, compute_dtype: str):
        self._ark, self._cdt = ark, compute_dtype

    def __getattr__(self, name: str):
        return getattr(self._ark, name)

    def repack_quantized_weight(self, intweight, scales, zeros, group_size, _compute_dtype, *rest):
        return self._ark.repack_quantized_weight(intweight, scales, zeros, group_size, self._cdt, *rest)


@contextlib.contextmanager
def _ark_compute_dtype(cdt: str):
    """Loads inside this context get ark layers that compute in `cdt` ("fp32", "bf16", "fp16").

    auto-round-lib 0.16's `QuantLinear.post_init` hard-codes compute dtype "auto" (int8 activations on AMX/VNNI
    CPUs) and takes no argument for it; its forward passes `self.cdt` to the GEMM. So post_init is wrapped to repack
    for `cdt` and to leave `cdt` on the layer. check_ark_compute verifies the result numerically."""
    import auto_round_kernel.qlinear as qlinear

    original = qlinear.QuantLinear.post_init

    def post_init(layer):
        real = qlinear.ark
        qlinear.ark = _RepackWithComputeDtype(real, cdt)
        try:
            original(layer)
        finally:
            qlinear.ark = real
        layer.cdt = cdt

    qlinear.QuantLinear.post_init = post_init
    try:
        yield
    finally:
        qlinear.QuantLinear.post_init = original


def check_ark_compute(model, path: str | os.PathLike, dtype: str) -> None:
    """The ark layers compute in `dtype`: every layer is packed for it, and the first one's output equals a
    plain `dtype` matmul with the dequantized weights (to float round-off) on a random input."""
    import torch

    cdt = _ARK_DTYPES[dtype]
    names = sorted(quant_prefixes(set().union(*(read_safetensors_header(f) for f in safetensors_files(Path(path))))))
    wrong = [n for n in names if getattr(model.get_submodule(n), "cdt", None) != cdt]
    if wrong:
        raise BackendUnavailableError(
            f"{len(wrong)} ark layers do not compute in {dtype} (e.g. {wrong[0]}); use quant.backend=dequant"
        )
    torch_dtype = getattr(torch, dtype)
    weight = dequantized_state_dict(path, dtype=torch_dtype, only=names[0])[f"{names[0]}.weight"]
    x = torch.randn(8, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch_dtype)
    with torch.no_grad():
        got = model.get_submodule(names[0])(x).float()
    want = x.float() @ weight.float().t()  # the exact product of the same inputs: the reference for every dtype
    rel = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    # A result rounded to bf16 is off by up to one bf16 step (2**-8) relative: measured 2.0-2.3e-3 for ark and
    # 1.6-1.7e-3 for torch's own bf16 matmul on an AVX512-BF16 CPU without AMX; int8 activations are off by
    # ~7e-3 (AMX CPUs), so they still fail the check.
    tol = {"float32": 1e-5, "bfloat16": 2.0**-8}.get(dtype, 2e-3)
    if not rel <= tol:
        raise BackendUnavailableError(
            f"the ark CPU kernels do not compute in {dtype} on this CPU ({names[0]}: relative error {rel:.1e} against "
            f"the dequantized weights); use quant.backend=dequant"
        )


def load_with_autoround_backend(path: Path, ar_backend: str, device: str, dtype: str, module_prefix: str):
    import auto_round.inference.convert_model  # noqa: F401  (transformers imports it to load; its logger and bar first)
    from transformers import AutoRoundConfig

    from colq_sweep.console import adopt_library_loggers, quiet_autoround_repacking
    from colq_sweep.model import load_colqwen3

    adopt_library_loggers()
    quiet_autoround_repacking()

    kwargs: dict[str, Any] = {"quantization_config": AutoRoundConfig(backend=ar_backend)}
    if device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    try:
        model = load_colqwen3(path, dtype=dtype, device=device, **kwargs)
    except SystemExit as exc:  # auto-round sys.exit()s when a backend's requirements are missing
        raise BackendUnavailableError(
            f"auto-round could not set up backend {ar_backend!r} for {path} (it exited with code {exc.code}); "
            "see its log above for the missing requirement"
        ) from exc
    check_kernel_modules(model, path, module_prefix)
    return model


def check_kernel_modules(model, path: str | os.PathLike, module_prefix: str) -> None:
    """Every packed layer of the checkpoint is served by a real kernel module from `module_prefix`."""
    from torch import nn

    names = set()
    for f in safetensors_files(Path(path)):
        names |= set(read_safetensors_header(f))
    prefixes = sorted(quant_prefixes(names))
    if not prefixes:
        raise QuantizationError(f"{path} holds no packed (qweight) tensors")
    bad = []
    for p in prefixes:
        mod = model.get_submodule(p)
        cls = type(mod)
        if (
            isinstance(mod, nn.Linear)
            or "fake" in cls.__name__.lower()
            or not cls.__module__.startswith(module_prefix)
        ):
            bad.append(f"{p}: {cls.__module__}.{cls.__name__}")
    fakes = [n for n, m in model.named_modules() if "fake" in type(m).__name__.lower()]
    if bad or fakes:
        raise BackendUnavailableError(
            f"{len(bad)} of {len(prefixes)} quantized layers are not served by {module_prefix} kernels "
            f"({bad[:3]}); fake/fallback modules: {fakes[:3]}. Refusing to run (auto-round's fallback runs random "
            "or fake-quantized weights)"
        )
