"""The report's "Searches" section: what each tolerance or Optuna search of the experiment tried and chose.

A search's parent run (tag `colq.search.kind`) holds its record, `search/search.json` (track/multirun.py
`record_search`). The newest record of each search is shown (a rerun of the same tolerance search, or a resumed
study, supersedes the earlier ones): the tolerance search's candidates in cost order with their predicted and built
sizes, losses, intervals and verdicts, the chosen one marked; the study's trials with their objective values, the
best trial or the Pareto set marked.
"""

from __future__ import annotations

import json
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.report import tables as T


def load_searches(client, runs: list, tmp: Path) -> list[dict]:
    """The newest record of each search among `runs` (the experiment's runs), newest first."""
    out, seen = [], set()
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        if run.data.tags.get(R.ROLE) != R.ROLE_SWEEP or not run.data.tags.get(R.SEARCH_KIND):
            continue
        try:
            path = client.download_artifacts(run.info.run_id, R.SEARCH_ARTIFACT, str(tmp / run.info.run_id))
            record = json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 - a search that ended before writing its record has nothing to show
            continue
        if record.get("kind") == "optuna":
            identity = ("optuna", record.get("study"))
        else:
            identity = ("tolerance", json.dumps(record.get("spec"), sort_keys=True),
                        tuple(sorted(c["overrides"] for c in record.get("candidates", []))))  # fmt: skip
        if identity in seen:
            continue
        seen.add(identity)
        out.append({**record, "parent_run_id": run.info.run_id, "status": run.info.status})
    return out


def section_searches(searches: list[dict]) -> list[str]:
    if not searches:
        return []
    lines = ["## Searches", "",
             "What each search of this experiment tried, newest first (hydra/sweeper=colq-tolerance | colq-optuna; "
             "README \"Search\"). The numbers are the runs' own, as in the tables above.", ""]  # fmt: skip
    for s in searches:
        lines += _tolerance(s) if s["kind"] == "tolerance" else _optuna(s)
    return lines


def _mb(v) -> str:
    return "-" if v is None else f"{float(v) / 1e6:.3f} MB"


def _pct(v) -> str:
    return "-" if v is None else f"{float(v):.2f} %"


def _tolerance(s: dict) -> list[str]:
    spec = s["spec"]
    crit = "point estimate" if spec["criterion"] == "point" else "point estimate and 95 % upper end"
    lines = [f"### Tolerance search (parent run `{s['parent_run_id']}`, {s['status']})", "",
             f"Tolerance {spec['max_loss_pct']:g} % loss of avg NDCG@5 ({crit}); candidates tried cheapest first by "
             f"predicted {spec['cost']}. **{s['answer']}**", ""]  # fmt: skip
    rows = []
    for c in s["candidates"]:
        mark = "**chosen**" if c["num"] == s.get("chosen") else ""
        rows.append([f"#{c['num']}", c["overrides"], c["label"], _mb(c["cost"]["total_bytes"]), _mb(c["measured_bytes"]),
                     _pct(c["loss_pct"]), _pct(c["loss_hi_pct"]), c["verdict"], mark])  # fmt: skip
    head = ["Job", "Candidate", "Configuration", "Predicted bytes", "As built", "Loss", "95 % upper", "Verdict", ""]
    return lines + [T.md_table(head, rows), ""]


def _optuna(s: dict) -> list[str]:
    objs = s["objectives"]
    mark = "best" if len(objs) == 1 else "Pareto"
    trials = [t for t in s["trials"] if not t.get("interrupted")]
    done = sum(t["state"] == "COMPLETE" for t in trials)
    lines = [f"### Optuna study `{s['study']}` (parent run `{s['parent_run_id']}`, {s['status']})", "",
             f"Space: {s['space']}. Objectives: {', '.join(objs)} ({s['sampler']}, seed {s['seed']}); {done} finished "
             f"and {len(trials) - done} failed trial(s) of n_trials={s['n_trials']}; storage `{s['storage']}`. "
             + (f"**{s['answer']}**" if s.get('answer') else ""), ""]  # fmt: skip
    rows = []
    for t in trials:
        vals = t["values"] or [None] * len(objs)
        cells = [f"{v:.5f}" if o == "ndcg5" and v is not None else _mb(v) for o, v in zip(objs, vals, strict=True)]
        state = t["state"] + (f": {t['error']}" if t.get("error") else "")
        rows.append([f"#{t['number']}", t.get("overrides") or "", t.get("label") or "", *cells, state,
                     f"**{mark}**" if t["best"] else ""])  # fmt: skip
    head = ["Trial", "Parameters", "Configuration", *("avg NDCG@5" if o == "ndcg5" else "Bytes" for o in objs), "State", ""]
    return lines + [T.md_table(head, rows), ""]
