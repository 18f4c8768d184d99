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

    scripts/workflow-fixtures.py --groups http://127.0.0.1:8188

makes workflows of our own that the templates do not cover, in the frontend
itself: group nodes (the older way of nesting, `workflow>NAME`), made with its
"Convert selected nodes to group node" command from the model-free smoke graph
and from ComfyUI's default workflow, their widgets changed, then saved
(`graph.serialize()`, as Workflow -> Save writes) and converted
(`graphToPrompt()`): `tests/fixtures/workflows/extra/<name>.ui.json` and
`<name>.api.json`.
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


SMOKE_UI = {
    "last_node_id": 5, "last_link_id": 4,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [300, 130], "mode": 0,
         "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
         "widgets_values": [48, 40, 1, 0]},
        {"id": 2, "type": "ImageInvert", "pos": [350, 0], "size": [200, 50], "mode": 0,
         "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": []},
        {"id": 3, "type": "ImageBlur", "pos": [600, 0], "size": [300, 100], "mode": 0,
         "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3, 4]}], "widgets_values": [2, 1.5]},
        {"id": 4, "type": "SaveImage", "pos": [950, 0], "size": [300, 300], "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 3}], "widgets_values": ["ComfyUI"]},
        {"id": 5, "type": "PreviewImage", "pos": [950, 350], "size": [300, 300], "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 4}], "widgets_values": []},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
              [4, 3, 0, 5, 0, "IMAGE"]],
    "version": 0.4,
}

# (name, the workflow to start from (None: the frontend's default), the node ids
# to group).
GROUPS = [
    ("group_smoke", SMOKE_UI, [2, 3]),
    ("group_default", None, [3, 5, 6, 7]),
    ("group_loader", None, [4, 6, 7]),
]

GROUP = """
const [text, ids, name, done] = arguments;
(async () => {
  try {
    if (text) {
      await window.app.loadGraphData(JSON.parse(text), true, true, null, {showMissingModelsDialog: false, showMissingNodesDialog: false});
    } else {
      await window.app.loadGraphData();
    }
    const canvas = window.app.canvas;
    canvas.deselectAll();
    for (const id of ids) canvas.select(window.app.graph.getNodeById(id));
    window.app.extensionManager.command.execute('Comfy.GroupNode.ConvertSelectedNodesToGroupNode');
    done({ok: true});
  } catch (e) {
    done({err: String(e && e.stack || e)});
  }
})();
"""

CONFIRM = """
const done = arguments[arguments.length - 1];
const button = [...document.querySelectorAll('.p-dialog button')].find(b => b.innerText.trim() === 'Confirm');
if (!button) { done('no Confirm button in the dialog'); } else { button.click(); done(true); }
"""

AFTER_GROUP = """
const done = arguments[arguments.length - 1];
(async () => {
  try {
    const g = window.app.graph.nodes.find(n => String(n.type).startsWith('workflow>'));
    if (!g) return done({err: 'no group node was made'});
    // Change every value widget, so that the test sees each reach its inner input.
    for (const w of g.widgets || []) {
      if (w.name.endsWith('control_after_generate') || w.type === 'button') continue;
      if (typeof w.value === 'number') {
        const max = w.options && w.options.max;
        w.value = (max !== undefined && w.value + 1 > max) ? w.value - 1 : w.value + 1;
      } else if (typeof w.value === 'string' && w.type !== 'combo') {
        w.value = w.value + ' (grouped)';
      }
    }
    const ui = window.app.graph.serialize();
    const p = await window.app.graphToPrompt();
    done({ok: JSON.stringify({ui: ui, api: p.output})});
  } catch (e) {
    done({err: String(e && e.stack || e)});
  }
})();
"""


def groups(comfy):
    out = os.path.join(OUT, "extra")
    os.makedirs(out, exist_ok=True)
    b = Browser()
    try:
        b.go(comfy + "/")
        if not b.run(WAIT_APP):
            sys.exit("the frontend did not start")
        for name, start, ids in GROUPS:
            text = json.dumps(start) if start else ""
            r = http("POST", b.url + "/execute/async", {"script": GROUP, "args": [text, ids, name]})["value"]
            if "err" in r:
                sys.exit(f"{name}: {r['err']}")
            # The frontend asks for the group node's name in a dialog.
            time.sleep(1)
            el = http("POST", b.url + "/element", {"using": "css selector", "value": ".p-dialog input"})["value"]
            eid = next(iter(el.values()))
            http("POST", f"{b.url}/element/{eid}/value", {"text": name})
            time.sleep(0.3)
            confirm = b.run(CONFIRM)
            if confirm is not True:
                sys.exit(f"{name}: {confirm}")
            time.sleep(1)
            r = b.run(AFTER_GROUP)
            if "err" in r:
                sys.exit(f"{name}: {r['err']}")
            both = json.loads(r["ok"])
            for kind in ("ui", "api"):
                with open(os.path.join(out, f"{name}.{kind}.json"), "w") as f:
                    json.dump(both[kind], f, indent=1, sort_keys=True)
            print(f"{name}: {len(both['api'])} nodes", flush=True)
    finally:
        b.close()


def main():
    if sys.argv[1] == "--groups":
        return groups(sys.argv[2])
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
