"""AutoRound's settings (`quant=w4a16`, conf/quant/w4a16.yaml), validated when the spec is made.

Four of them are set at the config's top level, as the study swept them: `seqlen`, `batch_size`, `nsamples` and
`iters` (`python -m colq_sweep -m seqlen=256,512,1024`); errors name them that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from colq_sweep.config.checks import ConfigError, boolean, choice, known_keys, pos_int, positive_or_null
from colq_sweep.config.specs import RESULTS, SPEED, QuantizedSpec, knob

BITS = (2, 3, 4, 8)
GROUP_SIZES = (-1, 32, 64, 128, 256)
FORMATS = ("auto_awq", "auto_round")


@dataclass(frozen=True)
class AutoRoundSpec(QuantizedSpec):
    method: str = "autoround"
    scheme: str = "W4A16"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    format: str = "auto_awq"  # auto_awq (AWQ GEMM packing, written by auto-round) | auto_round
    lr: float | None = None  # None: auto-round's default (1/iters)
    minmax_lr: float | None = None
    # moves cached block inputs between host and GPU: the same weights (sha256 on an H200), 2x slower: in no key
    low_gpu_mem_usage: bool = knob(False, SPEED)
    enable_torch_compile: bool = False  # changed a third of the int4 codes on an H200: in the keys
    allow_fewer_samples: bool = knob(False, RESULTS)  # calibrate on what survives instead of refusing
    seqlen: int = knob(1024, root=True)  # calibration sequence length (tokens per sample)
    batch_size: int = knob(8, root=True)  # calibration batch size
    nsamples: int = knob(512, root=True)  # calibration samples
    iters: int = knob(1000, root=True)  # SignRound tuning iterations per decoder block

    @classmethod
    def from_config(cls, quant: dict[str, Any], root: dict[str, Any]) -> AutoRoundSpec:
        """`quant` is the composed `quant` group, `root` the config's top level (where seqlen & co. live)."""
        known_keys("quant", quant, cls, ignore=cls.root_fields())
        for k in cls.root_fields():  # validated before the dataclass sees them: errors name the top-level key
            pos_int(k, root.get(k))
        return cls(**quant, **{k: root[k] for k in cls.root_fields()})

    def check(self) -> None:
        super().check()
        choice("quant.bits", self.bits, BITS)
        choice("quant.group_size", self.group_size, GROUP_SIZES)
        boolean("quant.sym", self.sym)
        choice("quant.format", self.format, FORMATS)
        m = re.fullmatch(r"W(\d+)A(\d+)", str(self.scheme))
        if not m:
            raise ConfigError("quant.scheme", self.scheme, "expected W<bits>A<bits>, e.g. W4A16")
        if int(m.group(1)) != self.bits:
            raise ConfigError("quant.bits", self.bits, f"scheme {self.scheme} means bits={m.group(1)}")
        if int(m.group(2)) != 16:
            raise ConfigError("quant.scheme", self.scheme, "only weight-only schemes (A16) are supported")
        if self.format == "auto_awq" and (self.bits != 4 or self.group_size == -1):
            raise ConfigError(
                "quant.format", self.format,
                f"the AWQ format holds only 4-bit grouped weights (got bits={self.bits}, group_size={self.group_size}); "
                "use quant.format=auto_round",
            )  # fmt: skip
        for k in ("lr", "minmax_lr"):
            positive_or_null(f"quant.{k}", getattr(self, k))
        for k in ("low_gpu_mem_usage", "enable_torch_compile", "allow_fewer_samples"):
            boolean(f"quant.{k}", getattr(self, k))
        for k in self.root_fields():
            pos_int(k, getattr(self, k))
        if self.nsamples < self.batch_size:
            raise ConfigError("nsamples", self.nsamples,
                              f"must be >= batch_size ({self.batch_size}); raise nsamples or lower batch_size")  # fmt: skip
        self.check_full_batches()

    def check_full_batches(self) -> None:
        """auto-round 0.16.1 cannot calibrate a partial last batch of Qwen3-VL (its rotary embeddings are cached per
        batch): nsamples must fill whole batches unless the user accepts calibrating on fewer."""
        if self.nsamples % self.batch_size and not self.allow_fewer_samples:
            full = self.nsamples - self.nsamples % self.batch_size
            raise ConfigError(
                "nsamples", self.nsamples,
                f"must be a multiple of batch_size ({self.batch_size}): auto-round 0.16.1 fails on a partial last "
                f"calibration batch; use {full} or {full + self.batch_size} (or quant.allow_fewer_samples=true to "
                f"calibrate on {full})",
            )  # fmt: skip

    def label(self, seed: int) -> str:
        return (f"w{self.bits}g{self.group_size} seqlen={self.seqlen} bs={self.batch_size} n={self.nsamples} "
                f"iters={self.iters} seed={seed}")  # fmt: skip

    def mteb_suffix(self) -> str:
        return f"w{self.bits}"


SPEC = AutoRoundSpec
