#!/usr/bin/env python3
"""Regenerates the reference conversions of ComfyUI's UI-format templates, made
by ComfyUI's own frontend: run by hand, against a running ComfyUI (its frontend
package and its templates installed with it), with Debian's chromium and
chromedriver. Nothing here installs ComfyUI.

    scripts/workflow-fixtures.py http://127.0.0.1:8188 \
        /path/to/site-packages/comfyui_workflow_templates/templates

For every template whose node classes all exist on that ComfyUI, it opens the
frontend in headless Chromium, runs `app.loadGraphData(template)` and
`app.graphToPrompt()`, and writes what the frontend would send as
`tests/fixtures/workflows/<template>.api.json`; the server's `/object_info` goes
to `tests/fixtures/workflows/object_info.json`, and the templates it skipped (and
why) to `tests/fixtures/workflows/skipped.json`. The templates themselves are not
copied: the tests read them from the `comfyui-workflow-templates` package
(PyPI), as `scripts/test` installs it.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "workflows")
VIRTUAL = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read() or b"null")


class Browser:
    def __init__(self, port=9515):
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(["chromedriver", f"--port={port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                http("GET", self.base + "/status")
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1400,900"]}}}}
        self.session = http("POST", self.base + "/session", caps)["value"]["sessionId"]
        self.url = f"{self.base}/session/{self.session}"
        http("POST", self.url + "/timeouts", {"script": 300000})

    def go(self, url):
        http("POST", self.url + "/url", {"url": url})

    def run(self, script, *args):
        return http("POST", self.url + "/execute/async", {"script": script, "args": list(args)})["value"]

    def close(self):
        try:
            http("DELETE", self.url)
        finally:
            self.proc.kill()


WAIT_APP = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  if (window.app && window.app.graph && window.app.graphToPrompt) return done(true);
  if (Date.now() - t0 > 120000) return done(false);
  setTimeout(poll, 200);
})();
"""

CONVERT = """
const [text, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  try {
    await window.app.loadGraphData(JSON.parse(text), true, true, null, {showMissingModelsDialog: false, showMissingNodesDialog: false});
    const p = await window.app.graphToPrompt();
    done({ok: JSON.stringify(p.output)});
  } catch (e) {
    done({err: String(e && e.stack || e)});
  }
})();
"""


def main():
    comfy, templates = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    info = http("GET", comfy + "/object_info")
    with open(os.path.join(OUT, "object_info.json"), "w") as f:
        json.dump(info, f, sort_keys=True, separators=(",", ":"))
    b = Browser()
    skipped = {}
    written = 0
    try:
        b.go(comfy + "/")
        if not b.run(WAIT_APP):
            sys.exit("the frontend did not start")
        for name in sorted(os.listdir(templates)):
            if not name.endswith(".json") or name.startswith("index"):
                continue
            with open(os.path.join(templates, name)) as f:
                text = f.read()
            wf = json.loads(text)
            if "nodes" not in wf:
                continue
            subs = {s["id"] for s in wf.get("definitions", {}).get("subgraphs", [])}
            nodes = list(wf["nodes"])
            for s in wf.get("definitions", {}).get("subgraphs", []):
                nodes += s.get("nodes", [])
            missing = sorted({n["type"] for n in nodes
                              if n["type"] not in info and n["type"] not in VIRTUAL
                              and n["type"] not in subs})
            if missing:
                skipped[name] = "node classes this ComfyUI does not have: " + ", ".join(missing)
                continue
            r = b.run(CONVERT, text)
            if "err" in r:
                skipped[name] = "the frontend failed: " + r["err"].splitlines()[0]
                continue
            out = json.loads(r["ok"])
            stem = name[:-len(".json")]
            with open(os.path.join(OUT, stem + ".api.json"), "w") as f:
                json.dump(out, f, indent=1, sort_keys=True)
            written += 1
            print(f"{stem}: {len(out)} nodes", flush=True)
    finally:
        b.close()
    with open(os.path.join(OUT, "skipped.json"), "w") as f:
        json.dump(skipped, f, indent=1, sort_keys=True)
    print(f"{written} conversions written, {len(skipped)} templates skipped")


if __name__ == "__main__":
    main()
