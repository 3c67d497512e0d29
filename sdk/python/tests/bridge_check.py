#!/usr/bin/env python3
"""Checks the Python client against a running bridge, and its datatype mapping
offline. Usage: bridge_check.py ENDPOINT (models `simple` and `sleepy` served).
Prints one JSON object: {"checks": {name: "ok" | error}}; exit 1 if any failed.
Run by tests/e2e/zmq-python.test.ts."""
import json
import sys
import traceback

import numpy as np

from tensorbroker_client import DTYPES, Client, TensorBrokerError, datatype_of, from_frame, to_frame

checks = {}


def check(fn):
    try:
        fn()
        checks[fn.__name__] = "ok"
    except Exception:  # noqa: BLE001 - report every failure
        checks[fn.__name__] = traceback.format_exc(limit=3)
    return fn


def roundtrip(arr, datatype=None):
    dt, shape, buf = to_frame(arr, datatype)
    return dt, from_frame(dt, shape, bytes(buf))


@check
def datatype_mapping():
    for name, dtype in DTYPES.items():
        arr = np.arange(6).astype(dtype).reshape(2, 3)
        dt, back = roundtrip(arr)
        assert dt == name, (dt, name)
        assert back.dtype == dtype and back.shape == (2, 3) and (back == arr).all(), name
    # big-endian input is converted to little-endian on the wire
    dt, back = roundtrip(np.array([1, 2, 258], dtype=">i4"))
    assert dt == "INT32" and back.tolist() == [1, 2, 258]
    # non-contiguous views are sent as contiguous copies
    dt, back = roundtrip(np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2])
    assert back.tolist() == [[0, 2], [4, 6], [8, 10]]
    assert datatype_of(np.zeros(1, dtype=bool)) == "BOOL"


@check
def bytes_mapping():
    arr = np.array([[b"hi", b""], [b"\x00\xff", "\u00e9".encode()]], dtype=object)
    dt, shape, buf = to_frame(arr)
    assert dt == "BYTES" and shape == [2, 2]
    assert bytes(buf)[:10] == b"\x02\x00\x00\x00hi\x00\x00\x00\x00"
    back = from_frame(dt, shape, buf)
    assert back.dtype == object and back.tolist() == arr.tolist()
    dt, back = roundtrip(np.array(["a", "bc"]))
    assert dt == "BYTES" and back.tolist() == [b"a", b"bc"]


def main(endpoint):
    client = Client(endpoint, window=8)

    @check
    def simple_sums():
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        b = np.full((2, 16), 3, dtype=np.int32)
        out = client.infer("simple", {"INPUT0": a, "INPUT1": b}, timeout=10)
        assert out["OUTPUT0"].dtype == np.int32
        assert (out["OUTPUT0"] == a + b).all() and (out["OUTPUT1"] == a - b).all()
        only = client.infer("simple", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])
        assert list(only) == ["OUTPUT1"]

    @check
    def pipelined():
        b = np.ones((1, 16), dtype=np.int32)
        reqs = [{"model": "simple", "inputs": {"INPUT0": np.full((1, 16), i, np.int32), "INPUT1": b}} for i in range(100)]
        results = client.infer_many(reqs)
        assert [r["OUTPUT0"][0, 0] for r in results] == [i + 1 for i in range(100)]

    @check
    def fp32_echo():
        x = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
        out = client.infer("sleepy", {"INPUT0": x}, parameters={"priority": 1})
        assert out["OUTPUT0"].dtype == np.float32 and (out["OUTPUT0"] == x).all()

    @check
    def errors():
        def code(**kw):
            try:
                client.infer(**kw)
            except TensorBrokerError as e:
                return e.code
            return "OK"
        i32 = np.zeros((1, 16), np.int32)
        assert code(model="nope", inputs={"INPUT0": i32}) == "NOT_FOUND"
        assert code(model="simple", inputs={"INPUT0": i32.astype(np.int64), "INPUT1": i32}) == "INVALID_ARGUMENT"
        assert code(model="simple", inputs={"INPUT0": i32, "INPUT9": i32}) == "INVALID_ARGUMENT"
        assert code(model="sleepy", inputs={"INPUT0": np.zeros((1, 1), np.float32)}, timeout=0.05) == "DEADLINE_EXCEEDED"
        mixed = client.infer_many([
            {"model": "simple", "inputs": {"INPUT0": i32, "INPUT1": i32}},
            {"model": "nope", "inputs": {"INPUT0": i32}},
        ], return_exceptions=True)
        assert isinstance(mixed[0], dict) and isinstance(mixed[1], TensorBrokerError) and mixed[1].code == "NOT_FOUND"
        # the client still works after a local timeout (the late reply is discarded)
        assert (client.infer("simple", {"INPUT0": i32 + 2, "INPUT1": i32})["OUTPUT0"] == 2).all()

    client.close()


if __name__ == "__main__":
    main(sys.argv[1])
    print(json.dumps({"checks": checks}))
    sys.exit(0 if all(v == "ok" for v in checks.values()) else 1)
