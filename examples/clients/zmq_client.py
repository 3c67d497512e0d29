#!/usr/bin/env python3
"""Example: call the broker's `simple` model over the ZeroMQ bridge from Python.

    PYTHONPATH=sdk/python python3 examples/clients/zmq_client.py [tcp://127.0.0.1:7787]

Sends one request (two rows), then 32 pipelined ones with infer_many, and
prints the sums. `--json` prints the results as one JSON object instead.
"""
import argparse
import json
import os
import sys

import numpy as np

try:
    from tensorbroker_client import Client, TensorBrokerError
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    from tensorbroker_client import Client, TensorBrokerError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("endpoint", nargs="?", default=os.environ.get("TB_ZMQ_ENDPOINT", "tcp://127.0.0.1:7787"))
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    with Client(args.endpoint, window=8) as client:
        out = client.infer("simple", {"INPUT0": a, "INPUT1": b}, timeout=10)

        many = client.infer_many(
            {"model": "simple", "inputs": {"INPUT0": np.full((1, 16), i, np.int32), "INPUT1": b[:1]}, "outputs": ["OUTPUT0"]}
            for i in range(32)
        )

        try:
            client.infer("no-such-model", {"INPUT0": a})
            error = None
        except TensorBrokerError as e:
            error = e.code

    result = {
        "sum": out["OUTPUT0"].tolist(),
        "diff": out["OUTPUT1"].tolist(),
        "dtype": str(out["OUTPUT0"].dtype),
        "pipelined": [r["OUTPUT0"][0, 0].item() for r in many],
        "unknown_model_error": error,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print("INPUT0 + INPUT1 =", out["OUTPUT0"])
        print("INPUT0 - INPUT1 =", out["OUTPUT1"])
        print("32 pipelined requests, first element of each sum:", result["pipelined"])
        print("unknown model ->", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
