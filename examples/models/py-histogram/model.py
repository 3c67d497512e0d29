#!/usr/bin/env python3
"""py-histogram: a per-image colour histogram in numpy, served with the Python model SDK.

Input  IMAGE      UINT8 [-1, -1, -1, 3]  N RGB pictures of one size (the REST bridge's
                                          image uploads produce exactly this)
Output HISTOGRAM  INT32 [-1, 3, BINS]     per picture and channel (R, G, B): pixels whose
                                          value v falls in bin v * BINS // 256
       MEAN_RGB   FP32  [-1, 3]           mean of R, G and B per picture

Env: PY_HISTOGRAM_BINS (default 16; 1..256, a divisor of 256), PY_HISTOGRAM_MAX_BATCH (8).
A solid colour (r, g, b) of H x W gives H*W in bins r*BINS//256, g*BINS//256,
b*BINS//256 of the three channels and zero elsewhere: easy to check.

    TB_ENDPOINT=ipc:///tmp/tb/broker.ipc TB_COPY_ID=c1 PYTHONPATH=sdk/python \
        /usr/bin/python3 examples/models/py-histogram/model.py
"""
import os
import sys

import numpy as np

try:
    from tensorbroker_model import Model, TensorSpec, serve
except ImportError:  # run from a checkout without installing the SDK
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sdk", "python"))
    from tensorbroker_model import Model, TensorSpec, serve


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


BINS = _env_int("PY_HISTOGRAM_BINS", 16)
if BINS < 1 or BINS > 256 or 256 % BINS:
    raise SystemExit(f"PY_HISTOGRAM_BINS must divide 256 (got {BINS})")


class Histogram(Model):
    name = "py-histogram"
    version = "1"
    max_batch = _env_int("PY_HISTOGRAM_MAX_BATCH", 8)
    inputs = [TensorSpec("IMAGE", "UINT8", [-1, -1, -1, 3])]
    outputs = [TensorSpec("HISTOGRAM", "INT32", [-1, 3, BINS]), TensorSpec("MEAN_RGB", "FP32", [-1, 3])]

    def load(self) -> None:
        self.shift = 8 - int(np.log2(BINS))  # v * BINS // 256 == v >> shift

    def predict_batch(self, inputs, ctx):
        image = inputs["IMAGE"]  # a read-only view of the received frame: no copy
        if image.ndim != 4 or image.shape[3] != 3:
            raise ValueError(f"IMAGE must be [N, H, W, 3], got {list(image.shape)}")
        n = image.shape[0]
        pixels = image.shape[1] * image.shape[2]
        flat = image.reshape(n, pixels, 3)
        out = {}
        if "HISTOGRAM" in ctx.outputs:
            # One bincount over the batch: index (picture, channel, bin) -> count.
            bins = (flat >> self.shift).astype(np.int64)
            bins += (np.arange(n, dtype=np.int64)[:, None, None] * 3 + np.arange(3)[None, None, :]) * BINS
            counts = np.bincount(bins.reshape(-1), minlength=n * 3 * BINS)
            out["HISTOGRAM"] = counts.reshape(n, 3, BINS).astype(np.int32)
        if "MEAN_RGB" in ctx.outputs:
            out["MEAN_RGB"] = flat.mean(axis=1, dtype=np.float64) if pixels else np.zeros((n, 3))
        return out


if __name__ == "__main__":
    serve(Histogram())
