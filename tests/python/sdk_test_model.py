#!/usr/bin/env python3
"""A model for testing the Python SDK (tests/e2e/sdk-python.test.ts) through every path.

Input X FP32 [-1, 4]. Outputs, per row:
  Y         FP32  [-1, 4]  X * 2
  VIEW      BOOL  [-1, 1]  X arrived as a read-only view of the frame (zero copy)
  COUNT     INT32 [-1, 1]  requests seen so far in this row's sequence (0 without one)
  LAST_END  BYTES [-1, 1]  "id:reason:slot:n" of the last sequence the broker ended, n = the
                           requests its dropped state counted ("none" without state); "" if none
Hooks on X[row, 0]: 999 fails the row's item alone; -1 raises (a batch error);
555 sleeps SDK_TEST_SLEEP_S (default 1.5) seconds; 777 returns Y with a wrong batch dimension.
SDK_TEST_CREDITS sets the credits (default 1), SDK_TEST_PARALLEL=1 runs them at once.
"""
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
from tensorbroker_model import Model, TensorSpec, serve  # noqa: E402


class SdkTest(Model):
    name = "sdk-test"
    version = "7"
    max_batch = 8
    max_sequences = 4
    credits = int(os.environ.get("SDK_TEST_CREDITS", "1"))
    parallel = os.environ.get("SDK_TEST_PARALLEL") == "1"
    inputs = [TensorSpec("X", "FP32", [-1, 4])]
    outputs = [
        TensorSpec("Y", "FP32", [-1, 4]),
        TensorSpec("VIEW", "BOOL", [-1, 1]),
        TensorSpec("COUNT", "INT32", [-1, 1]),
        TensorSpec("LAST_END", "BYTES", [-1, 1]),
    ]

    def load(self):
        time.sleep(float(os.environ.get("SDK_TEST_LOAD_S", "0")))
        if os.environ.get("SDK_TEST_LOAD_FAIL"):
            raise RuntimeError("weights missing")
        self.last_end = b""
        self.lock = threading.Lock()

    def predict_batch(self, inputs, ctx):
        x = inputs["X"]
        n = ctx.total_rows
        first = x[:, 0]
        if np.any(first == -1):
            raise ValueError("asked to raise")
        if np.any(first == 555):
            time.sleep(float(os.environ.get("SDK_TEST_SLEEP_S", "1.5")))
        for r in np.nonzero(first == 999)[0]:
            ctx.fail_item(ctx.item_of_row(int(r)), "row rejected by model")
        view = not x.flags.owndata and not x.flags.writeable
        count = np.zeros((n, 1), np.int32)
        for i, item in enumerate(ctx.items):
            if item.sequence is not None:
                st = ctx.state(i)
                st["n"] += 1
                count[item.slice] = st["n"]
        with self.lock:
            last = self.last_end
        y = x * 2
        if np.any(first == 777):
            y = y[:-1] if n > 1 else np.concatenate([y, y])
        return {
            "Y": y,
            "VIEW": np.full((n, 1), view),
            "COUNT": count,
            "LAST_END": np.array([[last]] * n, dtype=object),
        }

    def create_state(self, seq):
        return {"n": 0, "slot": seq.slot}

    def end_sequence(self, id, reason, slot, state):
        with self.lock:
            held = "none" if state is None else str(state["n"])
            self.last_end = f"{id}:{reason}:{slot}:{held}".encode()


if __name__ == "__main__":
    serve(SdkTest())
