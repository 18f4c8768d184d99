"""Schemathesis hooks for Studio Core's API (SCHEMATHESIS_HOOKS=hooks).

One rule of POST /api/generate (and of POST /api/batches, whose jobs take the
same fields) cannot be written in JSON Schema: width x height x
batch_size must stay within the workflow's pixel budget (`max_pixels` in
GET /api/workflows, `x-max-pixels` on each variant of the request schema). A body
over the budget is refused with 400 `invalid-param` by design, so the fuzzer must
not count it as a valid request wrongly rejected. This hook drops such bodies from
generation; nothing else is filtered.

The budgets come from the test (STUDIO_PIXEL_BUDGETS, JSON: workflow -> pixels).

Pictures: an image or mask parameter takes the id of an upload this server holds
(or a data: URL of a real picture), which no schema can generate. The test uploads
one picture first (STUDIO_FUZZ_UPLOAD_ID) and `map_body` puts its id in place of
any schema-valid value, so the rest of such a body is still fuzzed. (POST
/api/uploads itself takes arbitrary bytes that must be a real picture; the test
leaves it out and tests/it/uploads.rs throws random and hostile bytes at it.)

Models: a parameter that names a model file (sdxl's `checkpoint`) must name one a
live backend has, or the job is refused (400 `model-unavailable`); which ones is
known only at run time (`/api/workflows` lists them, `from_backends`). The test
passes them (STUDIO_FUZZ_MODEL_CHOICES, JSON: workflow -> parameter ->
{"choices": files, "max_length": its limit}) and `map_body` replaces a generated
string that is not one of them with the first, unless the string breaks the
parameter's own length limit (a negative case stays negative).

A second rule is about state: an Idempotency-Key already used with another body is
refused with 422 `idempotency-key-reuse` by design, and the fuzzer sends the same
few generated keys with many bodies. `before_call` makes the key of every call
unique (its generated value plus a counter, still within the documented 1-255
visible ASCII characters), so the header's syntax is still fuzzed but no two cases share a
key. Replays and reuse are tested in tests/it/idempotency.rs.

Workflows: whether a graph can be published (POST /api/workflows, and
/api/workflows/check, which says what publishing would give) or converted
(POST /api/workflows/convert) depends on the node classes the live backends
report, and its parameters on the graph's node ids: no schema can generate one
that is valid, as with model files. The test passes a graph the backends can run
in both of ComfyUI's formats (STUDIO_FUZZ_GRAPH, STUDIO_FUZZ_UI_WORKFLOW), and
`map_body` puts it in place of any schema-valid `workflow` (an object) and drops
a schema-valid `params` (an object), so the name and description are still
fuzzed and every 201 path is reached; a case made to break the schema (a
`workflow` or `params` that is not an object, a bad name) stays broken. Hostile
graphs have their own test (tests/it/workflows.rs).

Usage: `GET /api/usage` takes `from` and `to` as RFC 3339 times or days, which
a string schema cannot state; `map_query` puts readable ones in place of
generated strings, so grouping and keys are still fuzzed (bad times have their
own test, tests/it/usage.rs). A drain (`POST /api/admin/drain`) waits up to its
`timeout` for running jobs: the hook keeps it within the fuzzer's own request
timeout.

The body rules run in `map_body` and again in `before_call`, which sees every call:
some phases send cases that `map_body` never saw.
"""
import itertools
import json
import os
import re

import schemathesis

SUBMISSIONS = ("/api/generate", "/api/batches")
BUDGETS = json.loads(os.environ.get("STUDIO_PIXEL_BUDGETS", "{}"))
DEFAULT_WORKFLOW = os.environ.get("STUDIO_DEFAULT_WORKFLOW", "sdxl")


def _int(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not v.is_integer():
        return None
    return int(v)


@schemathesis.hook
def filter_body(ctx, body):
    if ctx.operation is None or ctx.operation.path not in SUBMISSIONS:
        return True
    if not isinstance(body, dict):
        return True
    workflow = body.get("workflow") or DEFAULT_WORKFLOW
    budget = BUDGETS.get(workflow) if isinstance(workflow, str) else None
    if budget is None:
        return True
    sizes = [_int(body.get(k)) for k in ("width", "height", "batch_size")]
    sizes = [s for s in sizes if s is not None]
    if len(sizes) < 2:
        return True
    pixels = 1
    for s in sizes:
        pixels *= s
    return pixels <= budget


UPLOAD_ID = os.environ.get("STUDIO_FUZZ_UPLOAD_ID", "")
PICTURE = re.compile(r"^([0-9a-f]{64}|data:image/(png|jpeg|webp);base64,.*)$", re.S)


MAX_STRING_CHARS = 10000
MODEL_CHOICES = json.loads(os.environ.get("STUDIO_FUZZ_MODEL_CHOICES", "{}"))


@schemathesis.hook
def map_body(ctx, body):
    return _fix_drain(ctx, _fix_workflow(ctx, _fix_generate(ctx, body)))


FUZZ_GRAPH = json.loads(os.environ.get("STUDIO_FUZZ_GRAPH", "null"))
FUZZ_UI_WORKFLOW = json.loads(os.environ.get("STUDIO_FUZZ_UI_WORKFLOW", "null"))


def _fix_workflow(ctx, body):
    if ctx.operation is None or ctx.operation.method.upper() != "POST":
        return body
    path = ctx.operation.path
    if path == "/api/workflows/convert" and isinstance(body, dict) and FUZZ_UI_WORKFLOW:
        return json.loads(json.dumps(FUZZ_UI_WORKFLOW))
    if path not in ("/api/workflows", "/api/workflows/check") or not isinstance(body, dict):
        return body
    if isinstance(body.get("workflow"), dict) and FUZZ_GRAPH:
        body["workflow"] = json.loads(json.dumps(FUZZ_GRAPH))
    if isinstance(body.get("params"), dict):
        del body["params"]
    return body


def _fix_generate(ctx, body):
    if ctx.operation is None or ctx.operation.path not in SUBMISSIONS:
        return body
    if not isinstance(body, dict):
        return body
    if UPLOAD_ID:
        for key in ("image", "mask"):
            value = body.get(key)
            if isinstance(value, str) and PICTURE.match(value):
                body[key] = UPLOAD_ID
    workflow = body.get("workflow") or DEFAULT_WORKFLOW
    models = MODEL_CHOICES.get(workflow) if isinstance(workflow, str) else None
    for key, spec in (models or {}).items():
        value = body.get(key)
        choices = spec.get("choices") or []
        limit = spec.get("max_length") or MAX_STRING_CHARS
        # Only a schema-valid name is replaced: a case made to break the schema
        # (too long) must stay broken.
        if (
            isinstance(value, str)
            and len(value) <= limit
            and choices
            and value not in choices
        ):
            body[key] = choices[0]
    return body


@schemathesis.hook
def map_query(ctx, query):
    return _fix_usage(ctx, query)


def _fix_usage(ctx, query):
    if ctx.operation is None or ctx.operation.path != "/api/usage":
        return query
    if isinstance(query, dict):
        for key, value in (("from", "2026-01-01"), ("to", "2026-12-31T00:00:00Z")):
            if isinstance(query.get(key), str):
                query[key] = value
    return query


def _fix_drain(ctx, body):
    if ctx.operation is None or ctx.operation.path != "/api/admin/drain":
        return body
    if isinstance(body, dict) and isinstance(body.get("timeout"), int) and not isinstance(body.get("timeout"), bool):
        if 0 <= body["timeout"] <= 3600:
            body["timeout"] = min(body["timeout"], 2)
    return body


_SERIAL = itertools.count()
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # Every call, whatever phase made it: the map_* hooks do not reach them all
    # (calls came with a model name map_body had not replaced, and one
    # Idempotency-Key with bodies that differed only in one enum value).
    if isinstance(case.body, dict):
        _fix_generate(ctx, case.body)
        case.body = _fix_workflow(ctx, case.body)
        case.body = _fix_drain(ctx, case.body)
    if isinstance(case.query, dict):
        case.query = _fix_usage(ctx, case.query)
    headers = case.headers
    if not headers or "Idempotency-Key" not in headers:
        return
    # A key generated to break the documented syntax stays as it is (the suffix
    # could make an empty one valid, and the case would no longer be negative).
    key = str(headers["Idempotency-Key"])
    if not VALID_KEY.fullmatch(key):
        return
    suffix = "-%d" % next(_SERIAL)
    headers["Idempotency-Key"] = key[: 255 - len(suffix)] + suffix
