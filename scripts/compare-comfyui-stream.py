#!/usr/bin/env python3
"""Compares ComfyUI's own /ws stream with the ComfyUI-compatible port's, for the
same prompt (a new colour each run, so ComfyUI caches nothing): run by hand,
against a running ComfyUI and a Studio Core in front of it, with the tools venv
(`websockets` comes with comfy-api-simplified). Nothing here installs ComfyUI.

    target/tools/venv/bin/python scripts/compare-comfyui-stream.py \
        127.0.0.1:8188 127.0.0.1:8288 KEY

Prints each stream's messages (type, the keys of its data) and whether they
match, `status` messages aside.
"""
import asyncio
import base64
import json
import random
import sys
import urllib.request
import uuid

import websockets


def graph(color):
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cmp"}},
    }


async def run(base, key):
    cid = uuid.uuid4().hex
    headers = {"Authorization": "Basic " + base64.b64encode(f"x:{key}".encode()).decode()} if key else {}
    out = []
    async with websockets.connect(f"ws://{base}/ws?clientId={cid}", additional_headers=headers) as ws:
        body = json.dumps({"prompt": graph(random.randrange(1 << 24)), "client_id": cid}).encode()
        req = urllib.request.Request(f"http://{base}/prompt", data=body,
                                     headers={"Content-Type": "application/json", **headers})
        pid = json.load(urllib.request.urlopen(req))["prompt_id"]
        while True:
            m = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(m, bytes):
                out.append(("(binary)", []))
                continue
            m = json.loads(m)
            out.append((m["type"], sorted((m.get("data") or {}).keys())))
            if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid:
                return out


async def main():
    comfy, port, key = sys.argv[1:4]
    theirs = await run(comfy, None)
    ours = await run(port, key)
    for name, seq in (("ComfyUI", theirs), ("the port", ours)):
        print(f"{name}: {len(seq)} messages")
        for t, k in seq:
            print(f"    {t} {k}")
    same = [m for m in theirs if m[0] != "status"] == [m for m in ours if m[0] != "status"]
    print("the same types in the same order, each with the same keys (status aside):", same)


asyncio.run(main())
