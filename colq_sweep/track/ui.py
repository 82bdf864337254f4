"""`make ui`: the MLflow UI over a sweep's store, and the addresses that open each experiment's runs.

MLflow 3 opens an experiment on its GenAI "Overview" page (traces), where these runs do not show (tried with MLflow
3.17.2; the experiment tag `mlflow.experimentKind` did not change it); the runs are in its "Model training" view,
`#/experiments/<id>?workflowType=machine_learning`. This prints that address for every experiment of the store,
then serves the UI (`python -m mlflow ui`, the same store), unless `--print-only`.
"""

from __future__ import annotations

import argparse
import os
import sys

RUNS_VIEW = "#/experiments/{id}?workflowType=machine_learning"


def experiment_urls(tracking_uri: str, base: str) -> list[tuple[str, str, int]]:
    """(experiment name, the address of its runs, how many runs) for every experiment with runs, by name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    out = []
    for exp in sorted(client.search_experiments(), key=lambda e: e.name):
        n = len(client.search_runs([exp.experiment_id], max_results=1000))
        if n:
            out.append((exp.name, f"{base.rstrip('/')}/{RUNS_VIEW.format(id=exp.experiment_id)}", n))
    return out


def main(argv: list[str] | None = None) -> int:
    from colq_sweep.track.store import resolve_tracking_uri

    ap = argparse.ArgumentParser(prog="python -m colq_sweep.track.ui", description=__doc__.splitlines()[0])
    ap.add_argument("--outputs-dir", default="outputs")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--print-only", action="store_true", help="print the addresses, do not serve the UI")
    a = ap.parse_args(argv)
    uri = resolve_tracking_uri(a.outputs_dir, a.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///"):]):
        print(f"colq_sweep: no MLflow store at {uri[len('sqlite:///'):]} (run `make demo` or a sweep first)", file=sys.stderr)
        return 2
    base = f"http://{a.host}:{a.port}"
    rows = experiment_urls(uri, base)
    print(f"MLflow UI for {uri} on {base}; each experiment's runs (the \"Model training\" view):")
    for name, url, n in rows:
        print(f"  {name:<20} {url}   ({n} runs)")
    sys.stdout.flush()
    if a.print_only:
        return 0
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host,
                              "--port", str(a.port)])  # fmt: skip
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
