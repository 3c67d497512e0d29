"""Tensor Broker client for Python: inference over the broker's ZeroMQ bridge.

    from tensorbroker_client import Client
    with Client("tcp://127.0.0.1:7787") as c:
        out = c.infer("simple", {"INPUT0": a, "INPUT1": b})
"""
from .client import Client, TensorBrokerError
from .tensors import DATATYPES, DTYPES, datatype_of, decode_bytes, encode_bytes, from_frame, to_frame

__all__ = [
    "Client", "TensorBrokerError", "DATATYPES", "DTYPES", "datatype_of",
    "encode_bytes", "decode_bytes", "to_frame", "from_frame",
]
__version__ = "0.1.0"
