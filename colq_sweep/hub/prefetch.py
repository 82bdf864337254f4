"""`python -m colq_sweep.prefetch [--check] <the sweep's overrides>`: the Hub inputs of a sweep, fetched or checked.

On a machine with Hub access (a login node), it downloads every checkpoint, calibration set and ViDoRe dataset the
composed sweep needs, at their pinned revisions, prepares the `datasets` caches that offline loading reads, and
prints what is there and its size. Point `HF_HOME` at storage the GPU nodes share, then sweep there with
`HF_HUB_OFFLINE=1`. With `--check` it only verifies (offline: the caches; online: cached or reachable), in seconds,
and exits 2 with one line per missing item and the command that fetches it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from colq_sweep.config.specs import CONF_DIR


def compose_points(overrides: list[str]) -> list:
    """The validated SweepPoint of every job the overrides (with `-m` sweep syntax and the experiment's
    `hydra.sweeper.params`) describe, as the sweeper would run them (Hydra's own expansion of the sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from colq_sweep.config import validate

    parser = OverridesParser.create()
    plain = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = compose(config_name="config", overrides=plain, return_hydra_config=True).hydra.sweeper.get("params")
        swept = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + overrides)
        (jobs,) = BasicSweeper.split_arguments(swept, None)  # later overrides win, as in the sweeper
        return [validate(compose(config_name="config", overrides=job)) for job in jobs]


def check_lines(points: list, overrides: list[str]) -> list[str]:
    """One line per missing Hub input (empty when everything is there)."""
    from colq_sweep.hub.inputs import missing

    fetch_cmd = "python -m colq_sweep.prefetch " + " ".join(shlex.quote(o) for o in overrides)
    return [f"colq_sweep: missing: {need.label} needed by {need.why}: {why}; fetch it with: {fetch_cmd}"
            for need, why in missing(points)]  # fmt: skip


def _table(needs) -> str:
    from colq_sweep.hub.inputs import cache_problem, size_of

    rows = [("item", "needed by", "status", "size")]
    for n in needs:
        problem = cache_problem(n)
        size = size_of(n)
        shown = f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
        rows.append((n.label, n.why, "cached" if problem is None else problem, shown))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m colq_sweep.prefetch", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify only (seconds); exit 2 listing what is missing")
    ap.add_argument("overrides", nargs="*", help="the sweep's overrides, e.g. experiment=seed-report")
    args = ap.parse_args(argv)
    from colq_sweep.config import ConfigError
    from colq_sweep.config.overrides import unknown_key

    bad = unknown_key(args.overrides)
    if bad:
        print(bad, file=sys.stderr)
        return 2
    try:
        points = compose_points(args.overrides)
    except ConfigError as err:
        print(f"colq_sweep: {err}", file=sys.stderr)
        return 2
    from colq_sweep.hub.inputs import cache_problem, fetch, needs, offline

    wanted = needs(points)
    if args.check:
        lines = check_lines(points, args.overrides)
        for line in lines:
            print(line, file=sys.stderr)
        if lines:
            return 2
        print(_table(wanted))
        return 0
    if offline():
        print("colq_sweep: prefetch downloads: unset HF_HUB_OFFLINE (or use --check)", file=sys.stderr)
        return 2
    for need in wanted:
        if cache_problem(need) is not None:
            print(f"fetching {need.label} ...", file=sys.stderr)
            fetch(need)
    print(_table(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
