#!/usr/bin/env python3
"""An independent KServe v2 / Triton gRPC client for the broker's gRPC bridge.

Generates Python stubs from proto/grpc_service.proto (+ model_config.proto) at
run time with grpc_tools.protoc into a temp folder, then calls the broker the
way tritonclient does (raw_input_contents built with numpy) and prints one JSON
document with what it saw. Exit code 0 = every check passed.

    /usr/bin/python3 tests/clients/grpc_client.py --port 8001 [--proto-dir proto]

Needs python3-grpcio, python3-grpc-tools and python3-numpy (Debian).
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

import grpc
import numpy as np


def generate_stubs(proto_dir, out_dir):
    files = ["grpc_service.proto", "model_config.proto"]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
           "--python_out", out_dir, "--grpc_python_out", out_dir] + files
    subprocess.run(cmd, check=True, capture_output=True)
    sys.path.insert(0, out_dir)
    return (importlib.import_module("grpc_service_pb2"),
            importlib.import_module("grpc_service_pb2_grpc"),
            importlib.import_module("model_config_pb2"))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto"))
    ap.add_argument("--model", default="simple")
    args = ap.parse_args()

    out = {"checks": {}}
    checks = out["checks"]
    with tempfile.TemporaryDirectory(prefix="tb-grpc-py-") as tmp:
        pb, pb_grpc, mc = generate_stubs(os.path.abspath(args.proto_dir), tmp)
        limit = 64 * 1024 * 1024
        channel = grpc.insecure_channel(f"{args.host}:{args.port}", options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        out["live"] = stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        out["ready"] = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
        out["server"] = {"name": server.name, "version": server.version, "extensions": list(server.extensions)}

        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=10)
        out["metadata"] = {
            "name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
        }

        config = stub.ModelConfig(pb.ModelConfigRequest(name=args.model), timeout=10).config
        out["config"] = {
            "name": config.name, "max_batch_size": config.max_batch_size,
            "input": [{"name": t.name, "data_type": mc.DataType.Name(t.data_type), "dims": list(t.dims)} for t in config.input],
            "dynamic_batching": config.HasField("dynamic_batching"),
        }

        # ModelInfer the way tritonclient sends it: raw_input_contents, one blob per input.
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        b = np.full((2, 16), 3, dtype=np.int32)
        req = pb.ModelInferRequest(model_name=args.model, id="py-1")
        for name, arr in (("INPUT0", a), ("INPUT1", b)):
            t = req.inputs.add()
            t.name, t.datatype = name, "INT32"
            t.shape.extend(arr.shape)
        req.raw_input_contents.extend([a.tobytes(), b.tobytes()])
        res = stub.ModelInfer(req, timeout=10)
        outputs = {}
        for t, raw in zip(res.outputs, res.raw_output_contents):
            outputs[t.name] = np.frombuffer(raw, dtype=np.int32).reshape(list(t.shape))
        out["infer"] = {"id": res.id, "model_name": res.model_name, "model_version": res.model_version,
                        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in res.outputs]}
        checks["raw_sums"] = bool(np.array_equal(outputs.get("OUTPUT0"), a + b))
        checks["raw_diffs"] = bool(np.array_equal(outputs.get("OUTPUT1"), a - b))

        # Typed contents (int_contents) and one requested output.
        typed = pb.ModelInferRequest(model_name=args.model)
        for name, arr in (("INPUT0", a[:1]), ("INPUT1", b[:1])):
            t = typed.inputs.add()
            t.name, t.datatype = name, "INT32"
            t.shape.extend(arr.shape)
            t.contents.int_contents.extend(arr.flatten().tolist())
        typed.outputs.add().name = "OUTPUT0"
        tres = stub.ModelInfer(typed, timeout=10)
        checks["typed_one_output"] = [t.name for t in tres.outputs] == ["OUTPUT0"]
        checks["typed_sums"] = bool(np.array_equal(np.frombuffer(tres.raw_output_contents[0], dtype=np.int32), (a[:1] + b[:1]).flatten()))

        # An unknown model is NOT_FOUND with the broker's message.
        bad = pb.ModelInferRequest()
        bad.CopyFrom(req)
        bad.model_name = "no-such-model"
        try:
            stub.ModelInfer(bad, timeout=10)
            out["not_found"] = None
        except grpc.RpcError as e:
            out["not_found"] = {"code": e.code().name, "details": e.details()}

        # A stream of 5 requests, answered with their ids.
        def requests():
            for i in range(5):
                r = pb.ModelInferRequest()
                r.CopyFrom(req)
                r.id = f"stream-{i}"
                r.raw_input_contents[0] = (a + i).tobytes()
                yield r
        stream_ok = {}
        for m in stub.ModelStreamInfer(requests(), timeout=20):
            i = int(m.infer_response.id.split("-")[1])
            got = np.frombuffer(m.infer_response.raw_output_contents[0], dtype=np.int32).reshape(2, 16)
            stream_ok[m.infer_response.id] = m.error_message == "" and bool(np.array_equal(got, a + i + b))
        checks["stream"] = len(stream_ok) == 5 and all(stream_ok.values())
        channel.close()

    out["ok"] = all(checks.values())
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
