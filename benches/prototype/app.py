"""The first prototype's API, rebuilt from its contract (DESIGN.md section 1) so the
cost bench (benches/cost.rs) can measure Studio Core against it in the same run.

Not part of Studio Core. Written as that prototype was: Flask, redis-py, gunicorn
with 4 sync workers, CORS for every origin (flask-cors), one Redis command per
step, logging to the console and to backend.log at INFO. The original code is not in this repository; what it did is
what the contract says (the status hash, its 24 h TTL, LPUSH to job_queue).
"""

import json
import logging
import os
import random
import uuid
from datetime import datetime, timezone

import redis
from flask import Flask, jsonify, request
from flask_cors import CORS

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    handlers=[logging.StreamHandler(), logging.FileHandler("backend.log", encoding="utf-8")],
)
log = logging.getLogger("backend")

app = Flask(__name__)
CORS(app)
r = redis.Redis(
    host=os.environ.get("REDIS_HOST", "redis"),
    port=int(os.environ.get("REDIS_PORT", "6379")),
    decode_responses=True,
)

STATUS_TTL = 24 * 3600


def now():
    return datetime.now(timezone.utc).isoformat()


@app.get("/health")
def health():
    try:
        r.ping()
    except redis.RedisError as e:
        return jsonify(status="error", redis=str(e)), 503
    return jsonify(status="ok", redis="healthy")


@app.post("/api/generate")
def generate():
    data = request.get_json(silent=True) or {}
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return jsonify(error="prompt is required"), 400
    seed = data.get("seed")
    if seed is None:
        seed = random.randint(0, 2**32 - 1)
    workflow = data.get("workflow") or "sdxl"
    job_id = str(uuid.uuid4())
    created = now()
    try:
        key = f"job:status:{job_id}"
        r.hset(
            key,
            mapping={
                "job_id": job_id,
                "status": "queued",
                "progress": 0,
                "image_url": "",
                "error": "",
                "updated_at": created,
            },
        )
        r.expire(key, STATUS_TTL)
        job = {"job_id": job_id, "prompt": prompt, "seed": seed, "workflow": workflow, "created_at": created}
        r.lpush("job_queue", json.dumps(job))
    except redis.RedisError as e:
        log.error("queueing failed: %s", e)
        return jsonify(error="queue unavailable"), 503
    log.info("queued job %s", job_id)
    return jsonify(job_id=job_id, status="queued"), 202


@app.get("/api/status/<job_id>")
def status(job_id):
    try:
        h = r.hgetall(f"job:status:{job_id}")
    except redis.RedisError as e:
        return jsonify(error=str(e)), 503
    if not h:
        return jsonify(error="job not found"), 404
    return jsonify(
        job_id=h.get("job_id", job_id),
        status=h.get("status", ""),
        progress=int(h.get("progress") or 0),
        image_url=h.get("image_url", ""),
        error=h.get("error", ""),
    )
