"""Tensor Broker model SDK for Python: write ``load()`` and ``predict_batch()`` over
numpy arrays, call ``serve(model)``; the SDK speaks the broker's link protocol
(ZeroMQ DEALER, protobuf envelopes, raw tensor frames).

    import numpy as np
    from tensorbroker_model import Model, TensorSpec, serve

    class Doubler(Model):
        name, version, max_batch = "doubler", "1", 16
        inputs = [TensorSpec("X", "FP32", [-1, 4])]
        outputs = [TensorSpec("Y", "FP32", [-1, 4])]

        def predict_batch(self, inputs, ctx):
            return {"Y": inputs["X"] * 2}

    if __name__ == "__main__":
        serve(Doubler())
"""
from .model import BatchContext, BatchItem, Model, SequenceInfo, StreamContext, TensorSpec
from .serve import PROTOCOL_VERSION, serve

__all__ = ["Model", "TensorSpec", "BatchContext", "BatchItem", "SequenceInfo", "StreamContext", "serve", "PROTOCOL_VERSION"]
__version__ = "0.1.0"
