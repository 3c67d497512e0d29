"""Submit an asynchronous job to Tensor Broker and fetch its result (Python 3, standard library only).

    TB_URL=http://127.0.0.1:8000 python3 examples/jobs/client.py

It sends one row to the `simple` example model (OUTPUT0 = INPUT0 + INPUT1), with an
Idempotency-Key so a retried submit returns the same job, then follows the job until
its result is ready, waiting as the broker's Retry-After says.
"""
import json
import os
import time
import urllib.error
import urllib.request

BASE = os.environ.get("TB_URL", "http://127.0.0.1:8000")
MODEL = os.environ.get("TB_MODEL", "simple")
HEADERS = {"content-type": "application/json", "idempotency-key": os.environ.get("TB_JOB_KEY", f"example-{time.time_ns()}")}
if os.environ.get("TB_API_KEY"):
    HEADERS["authorization"] = f"Bearer {os.environ['TB_API_KEY']}"
AUTH = {k: v for k, v in HEADERS.items() if k == "authorization"}


def call(method, path, body=None, headers=AUTH):
    """(status, headers, parsed JSON body) of one request; HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as res:
            return res.status, res.headers, json.loads(res.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"{}")


body = {
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
    ],
    "ttl_seconds": 3600,  # time allowed in the queue
    "max_attempts": 3,
    "metadata": {"source": "examples/jobs/client.py"},
}
status, headers, job = call("POST", f"/v2/models/{MODEL}/jobs", body, HEADERS)
if status != 202:
    raise SystemExit(f"submit: {status} {job}")
location = headers["location"]  # /v2/jobs/{id}
print(f"job {job['id']} {job['status']}")

while True:
    status, headers, result = call("GET", f"{location}/result")
    if status == 200:  # the same form /infer answers
        for out in result["outputs"]:
            print(out["name"], json.dumps(out["data"], separators=(",", ":")))
        break
    if status != 202:  # 410: cancelled, expired or past result_ttl; else the job failed
        _, _, view = call("GET", location)
        raise SystemExit(f"job {job['id']} ended {view['status']}: {view.get('last_error', result)}")
    time.sleep(min(float(headers.get("retry-after", "1")), 5))
