"""__NAME__: a Tensor Broker model.

The broker starts this file as a model copy (models.yaml: `command` for local
processes, `image` for Docker) and sends it batches of requests. Replace
`load` and `predict_batch` with your model.
"""
import numpy as np
from tensorbroker_model import Model, TensorSpec, serve


class __CLASS__(Model):
    name = "__NAME__"
    version = "1"
    max_batch = 8  # rows per batch
    # -1 = any size; the first dimension is the batch (rows).
    inputs = [TensorSpec("INPUT", "FP32", [-1, 4])]
    outputs = [TensorSpec("OUTPUT", "FP32", [-1, 4])]

    def load(self):
        # Read weights here: runs once, before the broker sends any request.
        self.factor = np.float32(2)

    def predict_batch(self, inputs, ctx):
        # Every request of the batch, stacked: ctx.total_rows rows.
        return {"OUTPUT": inputs["INPUT"] * self.factor}


if __name__ == "__main__":
    serve(__CLASS__())
