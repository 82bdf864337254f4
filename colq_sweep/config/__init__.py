"""The config of a sweep point: typed specs, their validation, and the resolvers the config tree uses.

    checks.py     ConfigError and the value checks (the bottom: a method's spec uses them)
    specs.py      ModelSpec, QuantSpec (+ QuantizedSpec, what every method shares), CalibSpec, EncoderSpec,
                  EvalSpec, SweepPoint; the identity marks of spec fields (which key a field is part of)
    validate.py   validate(cfg) -> SweepPoint: one line naming the field and the fix for a bad value
    overrides.py  the command line before Hydra: an override of a key the config does not have, one line
    resolvers.py  ${colq_entries:...} and ${colq_stamp:}, registered on import
"""

from colq_sweep.config.checks import ConfigError
from colq_sweep.config.resolvers import register_resolvers
from colq_sweep.config.specs import (
    CONF_DIR,
    CalibSpec,
    EncoderSpec,
    EvalSpec,
    IndexSpec,
    ModelSpec,
    QuantizedSpec,
    QuantSpec,
    SweepPoint,
    baseline_of,
)
from colq_sweep.config.validate import validate

register_resolvers()

__all__ = [
    "CONF_DIR", "CalibSpec", "ConfigError", "EncoderSpec", "EvalSpec", "IndexSpec", "ModelSpec", "QuantSpec", "QuantizedSpec",
    "SweepPoint", "baseline_of", "validate",
]  # fmt: skip
