"""`python -m colq_sweep.report --name <experiment> [--tracking-uri URI] [--outputs-dir outputs] [--out DIR] [--no-log]`"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m colq_sweep.report",
                                 description="Build outputs/reports/<name>/ (report.md, plots, entries.csv) from the "
                                             "MLflow runs of a sweep and log it to the sweep's parent run.")
    ap.add_argument("--name", required=True, help="MLflow experiment name (the sweep's `name`)")
    ap.add_argument("--tracking-uri", default=None,
                    help="default: $MLFLOW_TRACKING_URI, else sqlite:///<outputs-dir>/mlflow.db")
    ap.add_argument("--outputs-dir", default="outputs")
    ap.add_argument("--out", default=None, help="report folder (default <outputs-dir>/reports/<name>)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report as artifacts of the sweep run")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (quicker)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from colq_sweep.report.build import ReportError, build_report

    try:
        path = build_report(args.name, tracking_uri=args.tracking_uri, outputs_dir=args.outputs_dir,
                            out_dir=args.out, log_to_mlflow=not args.no_log, n_boot=args.n_boot, seed=args.seed,
                            plots=not args.no_plots)
    except (ReportError, ValueError) as err:
        print(f"colq_sweep.report: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
