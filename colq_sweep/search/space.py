"""A search space written as Hydra overrides, hydra-optuna-sweeper's syntax: `quant.scheme=choice(W2A16,W4A16)`,
`quant.group_size=32,128` (a comma list is a choice too), `iters=int(interval(10,1000))`, `quant.lr=tag(log,
interval(1e-4,1e-2))`, `nsamples=range(8,33,8)`; any other override is fixed for every trial.

Parsed with Hydra's own override grammar (the parser a grid sweep uses), so quoting and escaping are Hydra's. Each
dimension knows the override text of a value, so a trial's parameters become the overrides its job is composed
from, and `corners()` lists the configurations that every choice and both ends of every range must pass before the
first trial runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from colq_sweep.config.checks import ConfigError

SCALARS = (str, int, float, bool, type(None))
MAX_CORNERS = 512  # beyond this many corner configurations, each value is checked with the others at their first


@dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` choice (values + their override texts) | int | float (low, high, log, step)."""

    key: str  # the override's key as typed (`quant.scheme`, `+x`)
    kind: str
    values: tuple = ()  # choice: the values Optuna samples (scalars; other values by their override text)
    texts: tuple[str, ...] = ()  # choice: each value's override text, as Hydra parsed it
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None

    @property
    def name(self) -> str:
        """The parameter's name in the study (the key without Hydra's +/~ prefix)."""
        return self.key.lstrip("+~")

    def text(self, value: Any) -> str:
        """The override text of a sampled value."""
        if self.kind == "choice":
            return self.texts[self.values.index(value)]
        return repr(int(value)) if self.kind == "int" else repr(float(value))

    def corners(self) -> tuple:
        """The values that must all be valid: every choice, both ends of a range."""
        return self.values if self.kind == "choice" else (self.low, self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {{{', '.join(self.texts)}}}"
        scale = " log" if self.log else ""
        return f"{self.name} {self.kind}{scale} in [{self.text(self.low)}, {self.text(self.high)}]"

    def distribution(self):
        """Its Optuna distribution (imported here: only an Optuna search needs optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class Space:
    dims: tuple[Dimension, ...]
    fixed: tuple[str, ...] = field(default=())  # overrides every trial gets as typed

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then each dimension's value."""
        return list(self.fixed) + [f"{d.key}={d.text(params[d.name])}" for d in self.dims]

    def corners(self) -> tuple[list[list[str]], bool]:
        """Override lists covering every choice and both ends of every range: the whole product of those values
        when it has at most MAX_CORNERS members (True), else each value once with the others at their first (False)."""
        values = [d.corners() for d in self.dims]
        if math.prod(len(v) for v in values) <= MAX_CORNERS:
            combos = itertools.product(*values)
            return [self.overrides(dict(zip([d.name for d in self.dims], c, strict=False))) for c in combos], True
        out = []
        first = {d.name: v[0] for d, v in zip(self.dims, values, strict=False)}
        for d, vs in zip(self.dims, values, strict=False):
            for v in vs:
                out.append(self.overrides({**first, d.name: v}))
        return out, False

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dims)

    @property
    def size(self) -> int | None:
        """How many configurations the space has; None when a dimension is continuous."""
        n = 1
        for d in self.dims:
            if d.kind == "float":
                return None
            n *= len(d.values) if d.kind == "choice" else (int(d.high) - int(d.low)) // (d.step or 1) + 1
        return n


def parse_space(overrides: list) -> Space:
    """Hydra's parsed overrides (`OverridesParser.parse_overrides`) as a search space; a ConfigError names the first
    override that cannot be searched (shuffle, an empty range, a range of floats, a choice of lists of choices)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    dims, fixed = [], []
    for o in overrides:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        v, key = o.value(), o.get_key_element()
        typed = _typed(o)
        if getattr(v, "shuffle", False):
            raise ConfigError(key, typed, "shuffle() has no meaning in a search: use choice(...)")
        if isinstance(v, IntervalSweep):
            dims.append(_interval(o, key, v))
        elif isinstance(v, RangeSweep):
            dims.append(_range(o, key, v))
        elif isinstance(v, ChoiceSweep):
            texts = tuple(o.sweep_string_iterator())
            values = tuple(x if isinstance(x, SCALARS) else t for x, t in zip(v.list, texts, strict=False))
            if len(set(map(repr, values))) != len(values) or len(set(values)) != len(values):  # 1 == 1.0 == true
                raise ConfigError(key, typed, "a value is listed twice (or two values compare equal: 1, 1.0, true)")
            dims.append(Dimension(key, "choice", values=values, texts=texts))
        else:
            raise ConfigError(key, typed, "use choice(...), a comma list, interval(a,b) or range(a,b[,step])")
    names = [d.name for d in dims]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(twice[0], "", "searched twice: give one choice(...) or interval(...) per key")
    return Space(tuple(dims), tuple(fixed))


def _typed(o) -> str:
    """The value as typed (`choice(32,100)`), for error lines."""
    return str(o.input_line).split("=", 1)[-1]


def _interval(o, key: str, v) -> Dimension:
    log = "log" in v.tags
    ints = isinstance(v.start, int) and isinstance(v.end, int) and not isinstance(v.start, bool)
    if not v.start < v.end:
        raise ConfigError(key, _typed(o), "interval(low, high) needs low < high")
    if log and v.start <= 0:
        raise ConfigError(key, _typed(o), "a log interval needs low > 0")
    return Dimension(key, "int" if ints else "float", low=v.start, high=v.end, log=log)


def _range(o, key: str, v) -> Dimension:
    if "log" in v.tags:
        raise ConfigError(key, _typed(o), "tag(log, ...) applies to interval(...), not to range(...)")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (v.start, v.stop, v.step)) or v.step <= 0:
        raise ConfigError(key, _typed(o), "range(start, stop[, step]) of integers with step > 0 (or use interval)")
    last = v.start + (v.stop - v.start - 1) // v.step * v.step
    if last < v.start:
        raise ConfigError(key, _typed(o), "the range is empty")
    return Dimension(key, "int", low=v.start, high=last, step=v.step)
