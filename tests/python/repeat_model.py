"""Triton's repeat_int32 with the Python SDK (a decoupled, non-batching model):
IN INT32 [n], DELAY UINT32 [n] ms, WAIT UINT32 [1] -> n responses (OUT INT32 [1], IDX UINT32 [1])."""
import time

import numpy as np

from tensorbroker_model import Model, TensorSpec, serve


class Repeat(Model):
    name, version, max_batch, decoupled = "repeat_int32", "1", 0, True
    inputs = [TensorSpec("IN", "INT32", [-1]), TensorSpec("DELAY", "UINT32", [-1]), TensorSpec("WAIT", "UINT32", [1])]
    outputs = [TensorSpec("OUT", "INT32", [1]), TensorSpec("IDX", "UINT32", [1])]

    def predict_stream(self, inputs, ctx):
        if not ctx.whole:
            raise ValueError("repeat_int32 is a non-batching model: set batch_size: 0")
        values, delays = inputs["IN"], inputs["DELAY"]
        if len(delays) != len(values):
            raise ValueError(f"DELAY has {len(delays)} values for {len(values)} in IN")
        for i, v in enumerate(values):
            if delays[i]:
                time.sleep(delays[i] / 1000.0)
            yield {"OUT": np.array([v], dtype=np.int32), "IDX": np.array([i], dtype=np.uint32)}
        if inputs["WAIT"][0]:
            time.sleep(inputs["WAIT"][0] / 1000.0)


if __name__ == "__main__":
    serve(Repeat())
