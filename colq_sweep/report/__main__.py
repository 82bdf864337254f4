"""`python -m colq_sweep.report --name <experiment> [--tracking-uri URI] [--outputs-dir outputs] [--out DIR] [--no-log]
[--max-memory-gb G] [--max-loss-pct P] [--min-pages-per-s S] [--min-ndcg N] [--pages N] [--prefer quality|memory|speed]
[--mteb-export]`"""

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
    b = ap.add_argument_group("budget (the decision: the best configuration across models within it, or which "
                              "constraint binds)")
    b.add_argument("--max-memory-gb", type=float, default=None,
                   help="deployment memory (weights on disk + index) at most this many GB (10^9 bytes)")
    b.add_argument("--max-loss-pct", type=float, default=None,
                   help="avg NDCG@5 at most this many percent below the configuration's own original")
    b.add_argument("--min-pages-per-s", type=float, default=None, help="page encoding at least this fast")
    b.add_argument("--min-ndcg", type=float, default=None, help="avg NDCG@5 (entries every model has) at least this")
    b.add_argument("--pages", type=float, default=None,
                   help="size the index for this many pages (default: the corpora evaluated)")
    b.add_argument("--prefer", default="quality", choices=("quality", "memory", "speed"),
                   help="among the configurations within the budget: the best, the smallest or the fastest")
    ap.add_argument("--mteb-export", action="store_true",
                    help="also write each finished run's results in mteb's results layout under <out>/mteb/")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from colq_sweep.report.budget import Budget
    from colq_sweep.report.build import ReportError, report_of

    try:
        if args.pages is not None and not args.pages > 0:
            raise ValueError(f"--pages must be a page count > 0, got {args.pages:g}")
        budget = Budget(args.max_memory_gb, args.max_loss_pct, args.min_pages_per_s, args.min_ndcg, args.prefer)
        path, ans = report_of(args.name, args.tracking_uri, args.outputs_dir, args.out, not args.no_log, args.n_boot,
                              args.seed, not args.no_plots, budget, args.pages, args.mteb_export)
    except (ReportError, ValueError) as err:
        print(f"colq_sweep.report: {err}", file=sys.stderr)
        return 2
    if ans is not None:  # the answer to the budget question, as the report's decision says it
        print("\n".join(line.replace("**", "").replace("`", "") for line in ans.lines))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
