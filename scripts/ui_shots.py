"""Screenshots of the MLflow UI over a sweep's store, as a user sees it, in headless Chromium (Debian's `chromium`:
`apt-get install -y chromium`): the runs table (children expanded), the compare view of the newest multi-point
sweep's runs and their original, the Models tab, and the newest sweep run's report.html in the artifact viewer
(scrolled to its first plot). A checking aid for people (docs, issue notes), not a test.

    make ui &                                                  # or: python -m colq_sweep.track.ui --port 5000
    python scripts/ui_shots.py --outputs-dir outputs --name demo --out /tmp/shots

Drives Chromium through its DevTools protocol (aiohttp, which MLflow installs); each page gets 12 s to render.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLOSE_PANELS = "[...document.querySelectorAll('button')].filter(x=>/close/i.test(x.getAttribute('aria-label')||'')).forEach(x=>x.click())"
EXPAND = "[...document.querySelectorAll('button[data-component-id*=runnamecellrenderer]')].forEach(x=>x.click())"


async def _shoot(port: int, url: str, out: Path, js: str = "", wheel: int = 0) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            try:
                async with s.get(f"http://127.0.0.1:{port}/json") as r:
                    tabs = await r.json()
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        ws_url = next(t for t in tabs if t["type"] == "page")["webSocketDebuggerUrl"]
        async with s.ws_connect(ws_url, max_msg_size=0) as ws:
            n = 0

            async def cmd(method: str, **params):
                nonlocal n
                n += 1
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    m = await ws.receive_json()
                    if m.get("id") == n:
                        return m.get("result")

            await cmd("Page.enable")
            await cmd("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
            await cmd("Page.navigate", url=url)
            await asyncio.sleep(12)
            await cmd("Runtime.evaluate", expression=f"{CLOSE_PANELS}; {js}")
            await asyncio.sleep(4)
            if wheel:
                await cmd("Input.dispatchMouseEvent", type="mouseWheel", x=1000, y=600, deltaX=0, deltaY=wheel)
                await asyncio.sleep(3)
            r = await cmd("Runtime.evaluate", expression="location.href", returnByValue=True)
            shot = await cmd("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
            return r["result"]["value"]


def shoot(url: str, out: Path, js: str = "", wheel: int = 0, port: int = 9335) -> str:
    profile = tempfile.mkdtemp(prefix="colq-shots-")
    browser = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                                f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        return asyncio.run(_shoot(port, url, out, js, wheel))
    finally:
        browser.terminate()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs-dir", default="outputs")
    ap.add_argument("--name", default="demo", help="the experiment")
    ap.add_argument("--ui", default="http://127.0.0.1:5000", help="where the MLflow UI serves the store")
    ap.add_argument("--out", default="outputs/ui-shots")
    args = ap.parse_args()
    if shutil.which("chromium") is None:
        print("ui_shots: chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    from colq_sweep import contract as R
    from colq_sweep.track.store import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(args.outputs_dir, None))
    exp = client.get_experiment_by_name(args.name)
    if exp is None:
        print(f"ui_shots: no experiment {args.name!r} in {args.outputs_dir}", file=sys.stderr)
        return 2
    sweeps = client.search_runs([exp.experiment_id], f"tags.`{R.ROLE}` = '{R.ROLE_SWEEP}'", order_by=["attributes.start_time DESC"])
    children = {s.info.run_id: client.search_runs([exp.experiment_id], f"tags.`{R.PARENT}` = '{s.info.run_id}'") for s in sweeps}
    widest = max(children.values(), key=len, default=[])
    compared = [r.info.run_id for r in widest]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{args.ui}/#/experiments/{exp.experiment_id}"
    pages = [("runs.png", f"{base}?workflowType=machine_learning", EXPAND, 0),
             ("compare.png", f"{args.ui}/#/compare-runs?runs={json.dumps(compared)}&experiments={json.dumps([exp.experiment_id])}", "", 0),
             ("models.png", f"{base}/models?workflowType=machine_learning", "", 0)]  # fmt: skip
    if sweeps:
        pages.append(("report.png", f"{base}/runs/{sweeps[0].info.run_id}/artifacts/report/report.html", "", 1500))
    for name, url, js, wheel in pages:
        print(f"{out / name}: {shoot(url, out / name, js, wheel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
