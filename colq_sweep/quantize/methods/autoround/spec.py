"""AutoRound's settings (`quant=w4a16`, conf/quant/w4a16.yaml), validated when the spec is made.

- `algorithms`: what auto-round runs, a list (`quant.algorithms=[rtn]`): one block algorithm, `signround` (the
  default: tuned rounding), `rtn` (plain round-to-nearest: no calibration) or `opt_rtn` (auto-round's optimised RTN:
  calibrated, no tuning), optionally after the `awq` preprocessor (activation-aware smoothing). Rotations
  (hadamard, quarot, spinquant) and svdquant are refused: their exports need transforms at inference that the
  loaders of these formats do not apply, and auto-round 0.16.1 fails on Qwen3-VL's nested `text_config` for them.
- `scheme` W2A16 / W3A16 / W4A16 / W8A16 (optionally with a group, `W4A16G32`); `bits` and `group_size` follow it
  unless set; `sym`; `format` auto: the AWQ format for 4-bit grouped weights, else auto-round's (GPTQ packing).
- `recipe`: auto-round's own recipes (its CLI's `RECIPES`: best, default, light, rtn, opt_rtn) as defaults for what
  is left null; explicit values still win. The recipe itself is in no key: the values it gives are.
- Four knobs are set at the config's top level, as the study swept them: `seqlen`, `batch_size`, `nsamples`,
  `iters` (`python -m colq_sweep -m seqlen=256,512,1024`); errors name them that way. null: the recipe's value, else
  `DEFAULTS`.
A knob that cannot change the weights of the chosen algorithms is in no key (RTN: no calibration and no tuning
knob), so sweeping it builds one artifact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from colq_sweep.config.checks import ConfigError, boolean, choice, known_keys, pos_int, positive_or_null
from colq_sweep.config.specs import DERIVED, RESULTS, SPEED, QuantizedSpec, knob
from colq_sweep.quantize.kernels import KERNELS

BITS = (2, 3, 4, 8)
GROUP_SIZES = (-1, 32, 64, 128, 256)
FORMATS = ("auto_awq", "auto_round")
BLOCK_ALGORITHMS = ("signround", "rtn", "opt_rtn")
PREPROCESSORS = ("awq",)
ALIASES = {"autoround": "signround", "auto_round": "signround", "sign_round": "signround"}
REFUSED = {
    **dict.fromkeys(("hadamard", "random_hadamard", "quarot_hadamard", "quarot", "spinquant"),
                    "a rotation needs an online transform at inference that the AWQ / auto_round loaders do not apply "
                    "(and auto-round 0.16.1 fails on Qwen3-VL's nested text_config: no `hidden_size`)"),
    "svdquant": "its low-rank branches are not restored by the AWQ / auto_round loaders",
}  # fmt: skip
# auto-round 0.16.1's CLI recipes (auto_round/cli/main.py RECIPES), in our terms; tests check them against auto-round's
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"batch_size": 8, "iters": 200, "seqlen": 2048, "nsamples": 128, "lr": None},
    "best": {"batch_size": 8, "iters": 1000, "seqlen": 2048, "nsamples": 512, "lr": None},
    "light": {"batch_size": 8, "iters": 50, "seqlen": 2048, "nsamples": 128, "lr": 5e-3},
    "rtn": {"batch_size": 8, "seqlen": 2048, "nsamples": 1, "lr": None, "algorithms": ("rtn",)},
    "opt_rtn": {"batch_size": 8, "seqlen": 2048, "nsamples": 128, "lr": None, "algorithms": ("opt_rtn",)},
}
DEFAULTS = {"seqlen": 1024, "batch_size": 8, "nsamples": 512, "iters": 1000}  # no recipe, knob null
SCHEME_RE = re.compile(r"W(\d+)A(\d+)(?:G(\d+))?")


def canonical_algorithms(value: Any) -> tuple[str, ...]:
    """`[awq, signround]` as a tuple of canonical names, preprocessors first; one line for what is not accepted."""
    items = [value] if isinstance(value, str) else list(value or [])
    if not items:
        raise ConfigError("quant.algorithms", items, "list one block algorithm (signround, rtn or opt_rtn), "
                                                     "optionally after awq")  # fmt: skip
    names = []
    for item in items:
        name = ALIASES.get(str(item).lower(), str(item).lower())
        if name in REFUSED:
            raise ConfigError("quant.algorithms", item, f"not supported: {REFUSED[name]}")
        if name not in BLOCK_ALGORITHMS + PREPROCESSORS:
            raise ConfigError("quant.algorithms", item, f"unknown algorithm; allowed: {', '.join(BLOCK_ALGORITHMS + PREPROCESSORS)}")
        if name in names:
            raise ConfigError("quant.algorithms", item, "listed twice")
        names.append(name)
    blocks = [n for n in names if n in BLOCK_ALGORITHMS]
    if len(blocks) != 1:
        raise ConfigError("quant.algorithms", items, f"exactly one of {', '.join(BLOCK_ALGORITHMS)} (got {len(blocks)})")
    return tuple(n for n in names if n in PREPROCESSORS) + tuple(blocks)


@dataclass(frozen=True)
class AutoRoundSpec(QuantizedSpec):
    method: str = "autoround"
    algorithms: tuple[str, ...] = knob(("signround",), keyed_at_default=False)
    recipe: str | None = knob(None, DERIVED)
    scheme: str = "W4A16"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    format: str = "auto_awq"  # auto_awq (AWQ GEMM packing, written by auto-round) | auto_round
    lr: float | None = None  # None: auto-round's default (1/iters)
    minmax_lr: float | None = None
    avg_bits: float | None = knob(None, keyed_at_default=False)  # mixed bits (AutoScheme): refused, see check()
    # moves cached block inputs between host and GPU: the same weights (sha256 on an H200), 2x slower: in no key
    low_gpu_mem_usage: bool = knob(False, SPEED)
    enable_torch_compile: bool = False  # changed a third of the int4 codes on an H200: in the keys
    allow_fewer_samples: bool = knob(False, RESULTS)  # calibrate on what survives instead of refusing
    # the vision tower's blocks quantized too (needs a calibration with images when the algorithms calibrate)
    vision: bool = knob(False, keyed_at_default=False)
    vision_scheme: str | None = knob(None, keyed_at_default=False)  # null: the text scheme; same bits, own group
    seqlen: int = knob(1024, root=True)  # calibration sequence length (tokens per sample)
    batch_size: int = knob(8, root=True)  # calibration batch size
    nsamples: int = knob(512, root=True)  # calibration samples
    iters: int = knob(1000, root=True)  # SignRound tuning iterations per decoder block

    @classmethod
    def from_config(cls, quant: dict[str, Any], root: dict[str, Any]) -> AutoRoundSpec:
        """`quant` is the composed `quant` group, `root` the config's top level (where seqlen & co. live); nulls are
        filled from the recipe, the scheme and `DEFAULTS`."""
        known_keys("quant", quant, cls, ignore=cls.root_fields())
        q = dict(quant)
        recipe = q.get("recipe")
        if recipe is not None:
            choice("quant.recipe", recipe, tuple(RECIPES))
        preset = RECIPES.get(recipe, {})
        q["algorithms"] = canonical_algorithms(q.get("algorithms") or preset.get("algorithms") or ("signround",))
        if q.get("lr") is None and preset.get("lr") is not None:
            q["lr"] = preset["lr"]
        knobs = {}
        for k in cls.root_fields():  # validated before the dataclass sees them: errors name the top-level key
            v = root.get(k)
            knobs[k] = pos_int(k, v) if v is not None else preset.get(k, DEFAULTS[k])
        q.update(_from_scheme(q))
        return cls(**q, **knobs)

    # ------------------------------------------------------------------------------------------------- what matters

    @property
    def block(self) -> str:
        return self.algorithms[-1]

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.algorithms != ("rtn",)  # plain RTN reads no calibration data (0 forward passes, measured)

    @property
    def uses_seed(self) -> bool:
        return self.needs_calibration or self.block == "signround"

    @property
    def needs_images(self) -> bool:  # type: ignore[override]
        return self.vision and self.needs_calibration  # a calibrated vision tower (RTN reads no calibration)

    def relevant(self, name: str) -> bool:
        if name in ("seqlen", "nsamples", "batch_size", "allow_fewer_samples"):
            return self.needs_calibration
        if name in ("iters", "lr", "minmax_lr"):
            return self.block == "signround"
        if name == "vision_scheme":
            return self.vision
        return True

    @property
    def vision_group_size(self) -> int:
        """The vision blocks' group size: the vision scheme's, else the text one's."""
        m = SCHEME_RE.fullmatch(str(self.vision_scheme)) if self.vision_scheme else None
        return int(m.group(3)) if m and m.group(3) else self.group_size

    # ------------------------------------------------------------------------------------------------ validation

    def check(self) -> None:
        super().check()
        choice("quant.bits", self.bits, BITS)
        choice("quant.group_size", self.group_size, GROUP_SIZES)
        boolean("quant.sym", self.sym)
        choice("quant.format", self.format, FORMATS)
        m = SCHEME_RE.fullmatch(str(self.scheme))
        if not m:
            raise ConfigError("quant.scheme", self.scheme, "expected W<bits>A16 or W<bits>A16G<group>, e.g. W4A16")
        if int(m.group(2)) != 16:
            raise ConfigError("quant.scheme", self.scheme, "only weight-only schemes (A16) are supported")
        if int(m.group(1)) != self.bits:
            raise ConfigError("quant.bits", self.bits, f"scheme {self.scheme} means bits={m.group(1)}")
        if m.group(3) and int(m.group(3)) != self.group_size:
            raise ConfigError("quant.group_size", self.group_size, f"scheme {self.scheme} means group_size={m.group(3)}")
        if self.format == "auto_awq" and (self.bits != 4 or self.group_size == -1):
            raise ConfigError(
                "quant.format", self.format,
                f"the AWQ format holds only 4-bit grouped weights (got bits={self.bits}, group_size={self.group_size}); "
                "use quant.format=auto_round (or auto)",
            )  # fmt: skip
        if self.avg_bits is not None:
            raise ConfigError("quant.avg_bits", self.avg_bits, "mixed bits are not supported: auto-round 0.16.1's "
                              "AutoScheme ranks layers by the model's language-modelling loss (outputs.loss), which a "
                              "ColQwen3 embedding model does not return (it fails on the fixture)")  # fmt: skip
        kernel = KERNELS.get(self.backend)
        if kernel is not None and self.bits not in kernel.bits:
            raise ConfigError("quant.backend", self.backend, f"its kernels serve {'/'.join(map(str, kernel.bits))}-bit "
                              f"weights, not {self.bits}-bit; use auto or dequant")  # fmt: skip
        for k in ("lr", "minmax_lr"):
            positive_or_null(f"quant.{k}", getattr(self, k))
        self.check_vision()
        for k in ("low_gpu_mem_usage", "enable_torch_compile", "allow_fewer_samples"):
            boolean(f"quant.{k}", getattr(self, k))
        for k in self.root_fields():
            pos_int(k, getattr(self, k))
        if self.needs_calibration:
            if self.nsamples < self.batch_size:
                raise ConfigError("nsamples", self.nsamples,
                                  f"must be >= batch_size ({self.batch_size}); raise nsamples or lower batch_size")  # fmt: skip
            self.check_full_batches()

    def check_vision(self) -> None:
        boolean("quant.vision", self.vision)
        if self.vision_scheme is None:
            return
        m = SCHEME_RE.fullmatch(str(self.vision_scheme))
        if not m or int(m.group(2)) != 16:
            raise ConfigError("quant.vision_scheme", self.vision_scheme, "null (the text scheme) or W<bits>A16G<group>, e.g. W4A16G32")
        if int(m.group(1)) != self.bits:
            raise ConfigError("quant.vision_scheme", self.vision_scheme,
                              f"must have the text scheme's {self.bits} bits: an export holds one bit width (its "
                              "loaders read one); only the group size may differ")  # fmt: skip
        group = int(m.group(3)) if m.group(3) else self.group_size
        choice("quant.vision_scheme group", group, GROUP_SIZES)
        if self.format == "auto_awq" and group == -1:
            raise ConfigError("quant.vision_scheme", self.vision_scheme, "the AWQ format holds only grouped weights")

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

    # ----------------------------------------------------------------------------------------------------- names

    def method_label(self) -> str:
        """`signround`, `rtn`, `signround+awq`: the block algorithm first, then its preprocessors."""
        return "+".join([self.block, *self.algorithms[:-1]])

    def label(self, seed: int) -> str:
        """What tells this configuration apart: `w4g128 seqlen=512 bs=8 n=512 iters=1000 seed=42` (signround, as
        before), `rtn w8g128`, `signround+awq w4g128 best seqlen=2048 ...`."""
        parts = [] if self.algorithms == ("signround",) else [self.method_label()]
        parts.append(f"w{self.bits}g{self.group_size}" + ("" if self.sym else " asym"))
        if self.vision:
            vg = self.vision_group_size
            parts.append("+vision" + (f"(g{vg})" if vg != self.group_size else ""))
        if self.recipe:
            parts.append(self.recipe)
        if self.needs_calibration:
            parts += [f"seqlen={self.seqlen}", f"bs={self.batch_size}", f"n={self.nsamples}"]
        if self.block == "signround":
            parts.append(f"iters={self.iters}")
        if self.uses_seed:
            parts.append(f"seed={seed}")
        return " ".join(parts)

    def mteb_suffix(self) -> str:
        return f"w{self.bits}"


def _from_scheme(q: dict[str, Any]) -> dict[str, Any]:
    """bits and group_size from the scheme where they are null; format `auto` (or null): AWQ for 4-bit grouped."""
    out: dict[str, Any] = {}
    m = SCHEME_RE.fullmatch(str(q.get("scheme", "W4A16")))
    if m and q.get("bits") is None:
        out["bits"] = int(m.group(1))
    if q.get("group_size") is None:
        out["group_size"] = int(m.group(3)) if m and m.group(3) else 128
    if q.get("format") in (None, "auto"):
        bits = out.get("bits", q.get("bits"))
        out["format"] = "auto_awq" if bits == 4 and out.get("group_size", q.get("group_size")) != -1 else "auto_round"
    return out


SPEC = AutoRoundSpec
