"""The command line before Hydra sees it: an override of a key the config does not have (`foo=1`, a typo such as
`seqln=512`) gets one line naming it and exit 2, like every other config error, instead of Hydra's multi-line
composition error. Overrides that add keys (`+foo=1`) reach `config.validate`, which refuses unknown keys too. A group option that does
not exist (`model=nope`) gets one line listing the options."""

from __future__ import annotations

import difflib

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


def unknown_key(argv: list[str]) -> str | None:
    """The one-line error for the first override of an unknown key, or None when every key exists."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    import colq_sweep.config  # noqa: F401  (registers the resolvers the config uses)

    args = _override_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return None
    groups = _groups()

    def first(o) -> str:
        value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.value()
        return f"{o.get_key_element()}={value}"

    group_args = [first(o) for o in overrides if o.key_or_group in groups or "/" in o.key_or_group]
    keys = [o for o in overrides if o.type == OverrideType.CHANGE and o.key_or_group not in groups
            and "/" not in o.key_or_group and not o.key_or_group.startswith("hydra.")]  # fmt: skip
    if not keys and not group_args:
        return None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=group_args)
    except Exception as ex:  # noqa: BLE001 - a bad group option (model=nope): say so in one line
        lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
        options = []
        for ln in lines[1:]:
            if ln.startswith("Config search path"):
                break
            if not ln.endswith(":"):
                options.append(ln)
        return "colq_sweep: config error: " + (lines[0] if lines else type(ex).__name__) + (
            f"; available: {', '.join(options)}" if options else "")
    missing = object()
    for o in keys:
        if OmegaConf.select(cfg, o.key_or_group, default=missing, throw_on_missing=False) is missing:
            parent, _, leaf = o.key_or_group.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = list(node.keys()) if OmegaConf.is_dict(node) else []
            close = difflib.get_close_matches(leaf, [str(k) for k in known], n=1)
            hint = f"did you mean {(parent + '.') if parent else ''}{close[0]}?" if close else (
                f"known keys{' of ' + parent if parent else ''}: {', '.join(map(str, known))}")
            return f"colq_sweep: config error: {o.input_line}: no such key in the config; {hint}"
    return None
