"""OpenAI's own Python SDK (PyPI) against Studio Core's OpenAI Images API,
used as OpenAI documents it, with only its base URL changed.

    python client.py BASE_URL KEY

Prints one JSON line: what the SDK got.
"""
import base64
import json
import struct
import sys
import urllib.request

import openai

base, key = sys.argv[1:3]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def size_of(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
    return list(struct.unpack(">II", png[16:24]))


out = {}
r = client.images.generate(model="smoke", prompt="a lighthouse", n=2, size="64x48",
                           response_format="b64_json")
pngs = [base64.b64decode(d.b64_json) for d in r.data]
out["b64_sizes"] = [size_of(p) for p in pngs]
out["distinct"] = len(set(pngs)) == len(pngs)
out["created"] = r.created
r = client.images.generate(model="smoke", prompt="a harbour", size="32x32", response_format="url")
out["url_size"] = size_of(urllib.request.urlopen(r.data[0].url, timeout=30).read())
out["models"] = [m.id for m in client.models.list()]
try:
    client.images.generate(model="smoke", prompt="x", size="big")
    out["bad_size"] = None
except openai.BadRequestError as e:
    out["bad_size"] = {"status": e.status_code, "type": e.type, "param": e.param}
try:
    client.images.generate(model="no-such-model", prompt="x")
    out["bad_model"] = None
except openai.NotFoundError as e:
    out["bad_model"] = {"status": e.status_code, "code": e.code}
try:
    openai.OpenAI(base_url=base + "/v1", api_key="sk_wrong", max_retries=0).images.generate(
        model="smoke", prompt="x")
    out["wrong_key"] = None
except openai.AuthenticationError as e:
    out["wrong_key"] = {"status": e.status_code, "type": e.type}
# An edit: the picture through the img2img smoke workflow (LoadImage -> invert).
def png(w, h, rgb):
    import zlib
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
r = client.images.edit(model="smoke-img2img", image=("in.png", png(24, 16, (10, 20, 30)), "image/png"),
                       prompt="inverted", response_format="b64_json")
out["edit"] = size_of(base64.b64decode(r.data[0].b64_json))
try:
    client.images.edit(model="smoke-img2img", image=("in.png", png(8, 8, (1, 2, 3)), "image/png"),
                       mask=("m.png", png(8, 8, (255, 255, 255)), "image/png"), prompt="x")
    out["edit_mask"] = None
except openai.BadRequestError as e:
    out["edit_mask"] = {"status": e.status_code, "param": e.param}
print(json.dumps(out))
