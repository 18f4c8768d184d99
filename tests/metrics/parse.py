"""Parses a /metrics answer with the Prometheus project's own Python client
(prometheus_client, from PyPI), so the format is checked by code we did not write.

Reads the text on stdin; parses it with the strict OpenMetrics parser, then with
the classic Prometheus text parser; prints one JSON object: {"samples": [[name,
labels, value], ...], "families": {name: type}}. Any parse error exits non-zero.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic

text = sys.stdin.read()
families = {}
samples = []
for family in openmetrics(text):
    families[family.name] = family.type
    if family.unit:
        families[family.name + ":unit"] = family.unit
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
# The classic parser must read it too (it skips "# EOF" and "# UNIT").
classic_names = {f.name for f in classic(text)}
if not classic_names:
    sys.exit("the classic parser found no metrics")
print(json.dumps({"samples": samples, "families": families}))
