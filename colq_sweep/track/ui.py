"""`make ui`: the MLflow UI over a sweep's store, and the addresses that open each experiment's runs.

MLflow 3 opens an experiment on its GenAI "Overview" page (traces), where these runs do not show (tried with MLflow
3.17.2; the experiment tag `mlflow.experimentKind` did not change it); the runs are in its "Model training" view,
`#/experiments/<id>?workflowType=machine_learning`. This prints that address for every experiment of the store,
then serves the UI (`python -m mlflow ui`, the same store), unless `--print-only`.

`--register-best NAME --name EXPERIMENT` registers, in the model registry, the logged model of each run the latest
report marked `colq.best=true` (one per model) as a new version of registered model NAME, and exits: the one
command that puts a recommended checkpoint in the registry (never done automatically).
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


def register_best(uri: str, experiment: str | None, name: str) -> int:
    """See the module docstring; prints one line per registered version (exit 2 with one line when there is none)."""
    from mlflow import MlflowClient

    from colq_sweep import contract as R

    os.environ["MLFLOW_TRACKING_URI"] = uri  # the registry looks the logged model up through the default client
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment) if experiment else None
    if exp is None:
        print(f"colq_sweep: --register-best needs --name <experiment> of this store (got {experiment!r})", file=sys.stderr)
        return 2
    best = client.search_runs([exp.experiment_id], f"tags.`{R.IS_BEST}` = 'true'")
    models = [(r, o.model_id) for r in best for o in (r.outputs.model_outputs if r.outputs else [])]
    if not models:
        print(f"colq_sweep: no run of {experiment!r} is marked {R.IS_BEST}=true with a logged model: build the report "
              "first (python -m colq_sweep.report --name ...)", file=sys.stderr)  # fmt: skip
        return 2
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name, description="ColQwen3 checkpoints chosen by colq_sweep reports")
    for run, model_id in models:
        v = client.create_model_version(name, f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
                                        tags={R.MODEL: run.data.tags.get(R.MODEL, "?"), R.LABEL: run.data.tags.get(R.LABEL, "?")})  # fmt: skip
        print(f"registered {name} version {v.version}: {run.data.tags.get(R.MODEL)} {run.data.tags.get(R.LABEL)} "
              f"(run {run.info.run_id}, model {model_id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from colq_sweep.track.store import resolve_tracking_uri

    ap = argparse.ArgumentParser(prog="python -m colq_sweep.track.ui", description=__doc__.splitlines()[0])
    ap.add_argument("--outputs-dir", default="outputs")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--print-only", action="store_true", help="print the addresses, do not serve the UI")
    ap.add_argument("--register-best", metavar="NAME", default=None,
                    help="register the best run's logged model (colq.best=true, from the latest report) as NAME and exit")
    ap.add_argument("--name", default=None, help="the experiment (with --register-best)")
    a = ap.parse_args(argv)
    uri = resolve_tracking_uri(a.outputs_dir, a.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///"):]):
        print(f"colq_sweep: no MLflow store at {uri[len('sqlite:///'):]} (run `make demo` or a sweep first)", file=sys.stderr)
        return 2
    if a.register_best:
        return register_best(uri, a.name, a.register_best)
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
