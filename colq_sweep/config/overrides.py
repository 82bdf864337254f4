"""The command line before Hydra sees it: an override of a key the config does not have (`foo=1`, a typo such as
`seqln=512`) gets one line naming it and exit 2, like every other config error, instead of Hydra's multi-line
composition error. Overrides that add keys (`+foo=1`) reach `config.validate`, which refuses unknown keys too. A group option that does
not exist (`model=nope`) gets one line listing the options."""

from __future__ import annotations

import contextlib
import difflib
import itertools
from dataclasses import dataclass, field
from typing import Any

from colq_sweep.config.specs import CONF_DIR

_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-p", "--package",
                     "--experimental-rerun"}  # fmt: skip
_FLAGS_WITH_CHOICE = {"-c": ("job", "hydra", "all"), "--cfg": ("job", "hydra", "all"),
                      "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")}  # fmt: skip


def _override_args(argv: list[str]) -> list[str]:
    """The positional overrides of a Hydra command line (flags and their values left out)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("-"):
            out.append(a)
        elif a in _FLAGS_WITH_VALUE:
            i += 1
        elif a in _FLAGS_WITH_CHOICE and i < len(argv) and argv[i] in _FLAGS_WITH_CHOICE[a]:
            i += 1
    return out


def _groups() -> set[str]:
    return {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*") if p.is_dir()} | {
        "hydra/launcher", "hydra/sweeper", "hydra/job_logging", "hydra/hydra_logging", "hydra/output", "hydra/help",
        "hydra/hydra_help", "hydra/env", "hydra/callbacks",
    }  # fmt: skip


@dataclass
class CommandLine:
    """What the command line's overrides mean before Hydra runs anything."""

    error: str | None = None  # the one-line error for an unknown key or a missing group option
    results: list[tuple[str, str | None]] = field(default_factory=list)  # (outputs_dir, tracking_uri) of every job
    config: Any = None  # the first job's composed config (what Hydra will compose for it)


def read_command_line(argv: list[str]) -> CommandLine:
    """Every overridden key must exist in the composed config (a `???` value is a key too); and where each job's
    results go (a swept outputs_dir, tracking_uri or group is expanded; other sweeps take their first value).
    Composes once per swept group value (once, usually). Nothing is reported for what Hydra or validation report
    better (syntax errors, bad values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    import colq_sweep.config  # noqa: F401  (registers the resolvers the config uses)

    try:
        overrides = OverridesParser.create().parse_overrides(_override_args(argv))
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return CommandLine()
    groups = _groups()
    is_group = [o for o in overrides if o.key_or_group in groups or "/" in o.key_or_group]
    rest = [o for o in overrides if o not in is_group and not o.key_or_group.startswith("hydra.")]
    keys = [o for o in rest if o.type == OverrideType.CHANGE]
    plain = [f"{o.get_key_element()}={_values(o)[0]}" if o.is_sweep_override() else o.input_line for o in rest]
    combos = list(itertools.product(*[[f"{o.get_key_element()}={v}" for v in _values(o)] for o in is_group]))
    out = CommandLine()
    with _config_dir():
        for combo in combos:
            cfg, error = _compose([*combo, *plain])
            if error is not None:  # why: a group option that does not exist, or a key that does not
                cfg, error = _compose(list(combo))
                return CommandLine(error=error or _unknown(cfg, keys))
            out.config = out.config if out.config is not None else cfg
            for pair in _results(cfg, [o for o in keys if o.key_or_group in ("outputs_dir", "tracking_uri")]):
                if pair not in out.results:
                    out.results.append(pair)
    if any(a in _INFO_FLAGS or a.startswith("--cfg=") for a in argv):
        out.results = []  # nothing will run: --cfg, --help, --info
    return out


def unknown_key(argv: list[str]) -> str | None:
    """The one-line error for the first override of an unknown key (or a missing option), or None."""
    return read_command_line(argv).error


def _values(o) -> list[str]:
    """The override's values as text; an interval (a search's range: search/space.py) by its lower end."""
    from hydra.core.override_parser.types import IntervalSweep

    if isinstance(o.value(), IntervalSweep):
        return [str(o.value().start)]
    return [str(v) for v in o.sweep_string_iterator()] if o.is_sweep_override() else [str(o.value())]


@contextlib.contextmanager
def _config_dir():
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def _compose(group_args: list[str]):
    """(the composed config, None), or (None, the one-line error for a group option that does not exist)."""
    from hydra import compose

    try:
        return compose(config_name="config", overrides=group_args), None
    except Exception as ex:  # noqa: BLE001 - a bad group option (model=nope): say so in one line
        lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
        options = []
        for ln in lines[1:]:
            if ln.startswith("Config search path"):
                break
            if not ln.endswith(":"):
                options.append(ln)
        return None, "colq_sweep: config error: " + (lines[0] if lines else type(ex).__name__) + (
            f"; available: {', '.join(options)}" if options else "")


def _unknown(cfg, keys: list) -> str | None:
    from omegaconf import OmegaConf

    for o in keys:
        parts = o.key_or_group.split(".")
        depth = next((i for i in range(1, len(parts)) if _node(cfg, ".".join(parts[:i])) is None), len(parts))
        parent, leaf = ".".join(parts[: depth - 1]), parts[depth - 1]  # the first part that does not exist
        node = _node(cfg, parent)
        known = list(node.keys()) if OmegaConf.is_dict(node) else []
        if leaf not in known:  # keys(), not `in`: a mandatory `???` value is a key without a value, not no key
            close = difflib.get_close_matches(leaf, [str(k) for k in known], n=1)
            hint = f"did you mean {(parent + '.') if parent else ''}{close[0]}?" if close else (
                f"known keys{' of ' + parent if parent else ''}: {', '.join(map(str, known))}" if known
                else f"{parent} holds a value, not keys")
            return f"colq_sweep: config error: {o.input_line}: no such key in the config; {hint}"
    return None


def _results(cfg, where: list) -> list[tuple[str, str | None]]:
    """(outputs_dir, tracking_uri) for every value the command line gives them (interpolations resolved)."""
    from omegaconf import OmegaConf, open_dict

    out = []
    raw = [list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()] for o in where]
    for combo in itertools.product(*[[(o.key_or_group, v) for v in vals] for o, vals in zip(where, raw, strict=True)]):
        c = cfg.copy()
        with open_dict(c):
            for key, value in combo:
                OmegaConf.update(c, key, value, merge=False)
        try:
            out.append((str(c.outputs_dir), c.get("tracking_uri")))
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve: validation says so
            continue
    return out


def _node(cfg, dotted: str):
    """The config node at `dotted` (the root for ""), or None; `???` values on the way are not read."""
    node = cfg
    for part in [p for p in dotted.split(".") if p]:
        from omegaconf import OmegaConf

        if not OmegaConf.is_dict(node) or part not in list(node.keys()) or OmegaConf.is_missing(node, part):
            return None
        node = node[part]
    return node


_INFO_FLAGS = {"-c", "--cfg", "--info", "-h", "--help", "--hydra-help", "-sc", "--shell-completion"}
