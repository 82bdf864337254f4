"""The load-back kernels a quantized export can be evaluated with: one table, one list, one resolver.

- `ark`: auto-round-lib's CPU W4A16 kernels (transformers + `AutoRoundConfig(backend="ark")`), pinned to compute in
  the model dtype (see `kernel_compute_dtype`);
- `humming`: auto-round's `auto_round:humming(_awq)` CUDA kernels (package humming-kernels, JIT-compiled at
  load: nothing compiles at install), the `gpu` extra;
- `gptqmodel`: gptqmodel's CUDA kernels (AWQ: exllamav2 AWQ kernels, auto_round format: Marlin), the `gptqmodel`
  extra (source-only: its CUDA extensions compile at install);
- `dequant`: our own unpacking into plain 16-bit `nn.Linear` weights (quantize/dequant.py); any device;
- `auto`: the first of `AUTO_ORDER[device type]` that is installed (on CUDA fastest first, as measured on an H200:
  docs/PERFORMANCE.md).
Adding a kernel package is one `Kernel` row here (and, if auto should take it, its place in `AUTO_ORDER`).
"""

from __future__ import annotations

from dataclasses import dataclass

from colq_sweep.quantize.errors import BackendUnavailableError
from colq_sweep.runtime import cpu_int8_isa, module_available

# What the quantized matmuls compute in: `activation` = the model dtype (exact W4A16: same result on every CPU);
# `auto` = auto-round-lib's own CPU choice (int8 activations on AMX/VNNI CPUs: W4A8-like, CPU-dependent).
COMPUTE_MODES = ("activation", "auto")


@dataclass(frozen=True)
class Kernel:
    name: str
    device: str  # cpu | cuda | any
    module: str | None  # the Python module that must be importable (None: nothing beyond the core stack)
    package: str  # the distribution that provides it
    install: str  # how to get it, for the one-line refusal
    bits: tuple[int, ...]  # the weight widths it serves (measured on the fixture: ark 2/4/8, not 3)
    autoround_awq: str | None = None  # auto-round's backend name for the AWQ packing (None: not through auto-round)
    autoround_other: str | None = None  # ... and for auto-round's own (GPTQ-style) packing
    layer_module: str | None = None  # the module prefix of the layers it puts in place (checked after loading)

    def autoround_backend(self, packing: str) -> str:
        return (self.autoround_awq if packing == "awq" else self.autoround_other) or self.name


KERNELS = {k.name: k for k in (
    Kernel("ark", "cpu", "auto_round_kernel", "auto-round-lib (module auto_round_kernel)", "pip install auto-round-lib",
           (2, 4, 8), "ark", "ark", "auto_round_kernel"),
    Kernel("humming", "cuda", "humming", "humming-kernels", "pip install 'colq_sweep[gpu]'", (4,),  # W4 measured only
           "auto_round:humming_awq", "auto_round:humming", "auto_round_extension.humming"),
    Kernel("gptqmodel", "cuda", "gptqmodel", "gptqmodel", "pip install 'colq_sweep[gptqmodel]' (gptqmodel>=7.6,<7.7 "
           "for torch 2.13)", (2, 3, 4, 8), "gptqmodel:awq", "gptqmodel", "gptqmodel"),
    Kernel("dequant", "any", None, "", "", (2, 3, 4, 8)),
)}  # fmt: skip
BACKENDS = ("auto", *KERNELS)
AUTO_ORDER = {"cuda": ("humming", "gptqmodel"), "cpu": ("ark",)}


def resolve_backend(backend: str, device: str, bits: int = 4) -> str:
    """`auto` -> the first installed kernel of `AUTO_ORDER` for the device type that serves `bits`-bit weights (none
    in the table serves them: the exact dequantizing backend); a named backend is checked to serve here. Raises
    BackendUnavailableError with the fix."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if backend == "auto":
        order = [n for n in AUTO_ORDER[kind] if bits in KERNELS[n].bits]
        if not order:
            return "dequant"  # no real kernel for these bits here (W3 on a CPU): exact, 16-bit weights
        for name in order:
            if module_available(KERNELS[name].module):
                return name
        if kind == "cuda":
            raise BackendUnavailableError(
                f"backend=auto on CUDA needs real W{bits}A16 kernels and none is installed: "
                f"{KERNELS[order[0]].install} ({KERNELS[order[0]].package}); or use quant.backend=dequant (16-bit "
                "weights, accuracy only)"
            )
        backend = order[0]  # refused below, with its install line
    kernel = KERNELS.get(backend)
    if kernel is None:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if kernel.device == "cuda" and kind != "cuda":
        raise BackendUnavailableError(f"backend={backend} needs a CUDA device (device={device}); use ark on CPU")
    if kernel.device == "cpu" and kind != "cpu":
        raise BackendUnavailableError(f"backend={backend} runs on CPU only (device={device}); use humming, gptqmodel "
                                      "or dequant")  # fmt: skip
    if bits not in kernel.bits:
        raise BackendUnavailableError(f"backend={backend} does not serve {bits}-bit weights; use auto or dequant")
    if kernel.module and not module_available(kernel.module):
        raise BackendUnavailableError(
            f"backend={backend} needs {kernel.package}, which is not installed: {kernel.install}; or use "
            "quant.backend=dequant"
        )
    return backend


def kernel_compute_dtype(backend: str, dtype: str, compute: str = "activation") -> str:
    """What the quantized matmuls effectively compute in, recorded with every run and part of the eval revision.

    `activation`: the model dtype, whatever the backend (ark is pinned to it; dequant and the CUDA kernels run
    in it), so the result does not depend on the CPU. ark's `auto` mode lets auto-round-lib choose per CPU (int8
    activations where AMX/VNNI exist): recorded with the CPU feature that decides it, so runs on different CPUs
    never count as the same evaluation."""
    if compute == "auto":
        if backend != "ark":
            raise ValueError(f"compute=auto exists only for the ark CPU kernels, not backend={backend}")
        return f"ark-auto-{cpu_int8_isa()}"
    return dtype
