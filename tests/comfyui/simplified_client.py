"""Runs a workflow through Studio Core's ComfyUI-compatible port with
comfy-api-simplified (PyPI), a ComfyUI client library nobody here wrote, used
as its README says, unchanged: the key as the basic-auth password.

    python simplified_client.py URL KEY PICTURE

Uploads PICTURE, queues LoadImage -> ImageInvert -> SaveImage naming it, waits
for the end on the WebSocket, and fetches the pictures through /history and
/view. Prints one JSON line: what the library returned. A wrong password must
make the library raise.
"""
import json
import sys

from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper
from comfy_api_simplified.exceptions import ComfyApiError

url, key, picture = sys.argv[1:4]
api = ComfyApiWrapper(url, user="studio", password=key)
up = api.upload_image(picture)
graph = ComfyWorkflowWrapper({
    "1": {"class_type": "LoadImage", "inputs": {"image": f"{up['subfolder']}/{up['name']}" if up["subfolder"] else up["name"]},
          "_meta": {"title": "Load Image"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"title": "Invert"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "simplified"},
          "_meta": {"title": "Save Image"}},
})
images = api.queue_and_wait_images(graph, "Save Image")
queue = api.get_queue()
try:
    ComfyApiWrapper(url, user="studio", password="sk_wrong").get_queue()
    refused = False
except ComfyApiError:
    refused = True
print(json.dumps({
    "upload": up,
    "images": {name: len(data) for name, data in images.items()},
    "png": all(data.startswith(b"\x89PNG") for data in images.values()),
    "queue": queue,
    "wrong_key_refused": refused,
}))
