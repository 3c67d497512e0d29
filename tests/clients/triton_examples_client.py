#!/usr/bin/env python3
"""Triton's example client scripts, replayed with plain grpcio against the broker.

Makes the calls that Triton's client examples make (simple_grpc_string_infer_client,
grpc_explicit_int8_content_client, simple_grpc_sequence_sync_infer_client,
simple_grpc_sequence_stream_infer_client, simple_grpc_shm_client, image_client's
class_count on a toy classifier, and simple_grpc_custom_repeat plus tritonclient's
decoupled loop with enable_empty_final_response against repeat_int32) against the models of
examples/triton/models.yaml, with stubs generated from proto/*.proto (see
grpc_client.py), and checks the outputs those scripts check. Written here from
their logic, not copied. Prints one JSON document; exit code 0 = every check passed.

    /usr/bin/python3 tests/clients/triton_examples_client.py --port 8001 [--proto-dir proto]
        [--repeat-delay-ms 1000 --repeat-wait-ms 1000]   (the custom_repeat script's values)
"""
import argparse
import json
import os
import queue
import sys
import tempfile
import uuid

import grpc
import numpy as np

from grpc_client import generate_stubs

VALUES = [11, 7, 5, 3, 2, 0, 1]


def bytes_blob(items):
    """BYTES elements as tritonclient serialises them: uint32 LE length, then the bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def bytes_items(blob):
    out, i = [], 0
    while i < len(blob):
        n = int.from_bytes(blob[i:i + 4], "little")
        out.append(bytes(blob[i + 4:i + 4 + n]))
        i += 4 + n
    return out


def outputs_of(response):
    return {o.name: (o, response.raw_output_contents[i]) for i, o in enumerate(response.outputs)}


def seq_params(pb, req, seq_id, start, end):
    if isinstance(seq_id, int):
        req.parameters["sequence_id"].int64_param = seq_id
    else:
        req.parameters["sequence_id"].string_param = seq_id
    req.parameters["sequence_start"].bool_param = start
    req.parameters["sequence_end"].bool_param = end


def sequence_request(pb, seq_id, count, value, start, end):
    req = pb.ModelInferRequest(model_name="simple_sequence", id=f"{seq_id}_{count}")
    t = req.inputs.add()
    t.name, t.datatype = "INPUT", "INT32"
    t.shape.extend([1, 1])
    req.raw_input_contents.append(np.full((1, 1), value, dtype=np.int32).tobytes())
    req.outputs.add().name = "OUTPUT"
    seq_params(pb, req, seq_id, start, end)
    return req


def expected_sequences(ids):
    """What Triton's sequence clients expect from simple_sequence: INPUT + START."""
    return {
        ids[0]: [1] + VALUES,
        ids[1]: [101] + [-v for v in VALUES],
        ids[2]: [21] + [-v for v in VALUES],
    }


def sequences_to_send(ids):
    return [(ids[0], [0] + VALUES), (ids[1], [100] + [-v for v in VALUES]), (ids[2], [20] + [-v for v in VALUES])]


def string_example(pb, stub, checks, out):
    """simple_grpc_string_infer_client: simple_string sums, then simple_identity twice."""
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.ones((1, 16), dtype=np.int32)
    req = pb.ModelInferRequest(model_name="simple_string")
    for name, arr in (("INPUT0", in0), ("INPUT1", in1)):
        t = req.inputs.add()
        t.name, t.datatype = name, "BYTES"
        t.shape.extend([1, 16])
        req.raw_input_contents.append(bytes_blob([str(x).encode("utf-8") for x in arr.reshape(-1)]))
    for name in ("OUTPUT0", "OUTPUT1"):
        req.outputs.add().name = name
    outs = outputs_of(stub.ModelInfer(req, timeout=20))
    sums = [int(b) for b in bytes_items(outs["OUTPUT0"][1])]
    diffs = [int(b) for b in bytes_items(outs["OUTPUT1"][1])]
    checks["string_sum"] = sums == list((in0 + in1).reshape(-1))
    checks["string_diff"] = diffs == list((in0 - in1).reshape(-1))
    out["string_shape"] = list(outs["OUTPUT0"][0].shape)

    for label, items in (("identity_null_chars", ["he\x00llo".encode("utf-8")] * 16),
                         ("identity_bytes", [b"\x00\x01\x02\x03"] * 16)):
        req = pb.ModelInferRequest(model_name="simple_identity")
        t = req.inputs.add()
        t.name, t.datatype = "INPUT0", "BYTES"
        t.shape.extend([1, 16])
        req.raw_input_contents.append(bytes_blob(items))
        req.outputs.add().name = "OUTPUT0"
        outs = outputs_of(stub.ModelInfer(req, timeout=20))
        checks[label] = bytes_items(outs["OUTPUT0"][1]) == items


def int8_example(pb, stub, checks, out):
    """grpc_explicit_int8_content_client: INT8 inputs as int_contents, raw outputs."""
    req = pb.ModelInferRequest(model_name="simple_int8", model_version="")
    a, b = list(range(16)), [1] * 16
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        t = req.inputs.add()
        t.name, t.datatype = name, "INT8"
        t.shape.extend([1, 16])
        t.contents.int_contents[:] = data
    for name in ("OUTPUT0", "OUTPUT1"):
        req.outputs.add().name = name
    outs = outputs_of(stub.ModelInfer(req, timeout=20))
    checks["int8_sum"] = list(np.frombuffer(outs["OUTPUT0"][1], dtype=np.int8)) == [x + y for x, y in zip(a, b)]
    checks["int8_diff"] = list(np.frombuffer(outs["OUTPUT1"][1], dtype=np.int8)) == [x - y for x, y in zip(a, b)]
    # The script ends by sending a version that is not a number and expects an error.
    req.model_version = "wrong_specification"
    try:
        stub.ModelInfer(req, timeout=20)
        checks["int8_wrong_version_refused"] = False
    except grpc.RpcError as e:
        checks["int8_wrong_version_refused"] = True
        out["wrong_version"] = {"code": e.code().name, "details": e.details()}


def sequence_sync_example(pb, stub, checks, out):
    """simple_grpc_sequence_sync_infer_client: each sequence sent whole, unary calls."""
    ids = [3000, 3001, str(uuid.uuid4())]
    got = {}
    for seq_id, values in sequences_to_send(ids):
        for i, v in enumerate(values):
            res = stub.ModelInfer(sequence_request(pb, seq_id, i + 1, v, i == 0, i == len(values) - 1), timeout=20)
            got.setdefault(seq_id, []).append(int(np.frombuffer(res.raw_output_contents[0], dtype=np.int32)[0]))
    checks["sequence_sync"] = got == expected_sequences(ids)
    out["sequence_sync"] = {str(k): v for k, v in got.items()}


def sequence_stream_example(pb, stub, checks, out):
    """simple_grpc_sequence_stream_infer_client: three sequences written on one stream
    without waiting, answers matched back by the request id prefix."""
    ids = [1000, 1001, str(uuid.uuid4())]
    requests = queue.Queue()
    total = 0
    for seq_id, values in sequences_to_send(ids):
        for i, v in enumerate(values):
            requests.put(sequence_request(pb, seq_id, i + 1, v, i == 0, i == len(values) - 1))
            total += 1
    requests.put(None)
    got, errors = {}, []
    stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=60)
    for n, msg in enumerate(stream):
        if msg.error_message:
            errors.append(msg.error_message)
        else:
            r = msg.infer_response
            key = r.id.split("_")[0]
            got.setdefault(key, []).append(int(np.frombuffer(r.raw_output_contents[0], dtype=np.int32)[0]))
        if n + 1 == total:
            break
    stream.cancel()
    want = {str(k): v for k, v in expected_sequences(ids).items()}
    checks["sequence_stream"] = not errors and got == want
    out["sequence_stream"] = got
    out["sequence_stream_errors"] = errors


def shm_example(pb, stub, checks, out):
    """simple_grpc_shm_client: regions for the outputs and the inputs of `simple`
    in /dev/shm, registered, used for every tensor, checked, unregistered."""
    tag = f"tb-triton-py-{os.getpid()}"
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=10)
    in0 = np.arange(16, dtype=np.int32)
    in1 = np.ones(16, dtype=np.int32)
    paths = {"input": f"/dev/shm/{tag}-input", "output": f"/dev/shm/{tag}-output"}
    try:
        with open(paths["output"], "wb") as f:
            f.write(bytes(128))
        with open(paths["input"], "wb") as f:
            f.write(in0.tobytes() + in1.tobytes())
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="output_data", key=f"/{tag}-output", offset=0, byte_size=128), timeout=10)
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="input_data", key=f"/{tag}-input", offset=0, byte_size=128), timeout=10)
        req = pb.ModelInferRequest(model_name="simple")
        for i, name in enumerate(("INPUT0", "INPUT1")):
            t = req.inputs.add()
            t.name, t.datatype = name, "INT32"
            t.shape.extend([1, 16])
            t.parameters["shared_memory_region"].string_param = "input_data"
            t.parameters["shared_memory_byte_size"].int64_param = 64
            t.parameters["shared_memory_offset"].int64_param = 64 * i
        for i, name in enumerate(("OUTPUT0", "OUTPUT1")):
            o = req.outputs.add()
            o.name = name
            o.parameters["shared_memory_region"].string_param = "output_data"
            o.parameters["shared_memory_byte_size"].int64_param = 64
            o.parameters["shared_memory_offset"].int64_param = 64 * i
        res = stub.ModelInfer(req, timeout=20)
        shapes = {o.name: list(o.shape) for o in res.outputs}
        with open(paths["output"], "rb") as f:
            data = f.read()
        out0 = np.frombuffer(data[:64], dtype=np.int32).reshape(shapes["OUTPUT0"])
        out1 = np.frombuffer(data[64:128], dtype=np.int32).reshape(shapes["OUTPUT1"])
        checks["shm_sum"] = list(out0[0]) == list(in0 + in1)
        checks["shm_diff"] = list(out1[0]) == list(in0 - in1)
        status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10)
        out["shm_status"] = sorted(status.regions.keys())
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=10)
        checks["shm_unregistered"] = len(stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10).regions) == 0
    finally:
        for p in paths.values():
            if os.path.exists(p):
                os.unlink(p)


def classification_example(pb, stub, checks, out):
    """What image_client.py does with class_count, against the `classes` toy classifier:
    RepositoryModelLoad (it has no copy at boot), then OUTPUT0 asked with
    parameters["classification"].int64_param = 3, answers parsed as value:index:label."""
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="classes"), timeout=60)
    req = pb.ModelInferRequest(model_name="classes")
    t = req.inputs.add()
    t.name, t.datatype = "INPUT0", "FP32"
    t.shape.extend([2, 4])
    req.raw_input_contents.append(np.array([[0.1, 0.7, 0.2, 0.0], [3, 1, 4, 1]], dtype=np.float32).tobytes())
    o = req.outputs.add()
    o.name = "OUTPUT0"
    o.parameters["classification"].int64_param = 3
    res = stub.ModelInfer(req, timeout=20)
    items = [b.decode() for b in bytes_items(res.raw_output_contents[0])]
    out["classification"] = {"datatype": res.outputs[0].datatype, "shape": list(res.outputs[0].shape), "data": items}
    parsed = [(np.float32(v), int(i), label) for v, i, label in (s.split(":") for s in items)]
    checks["classification"] = res.outputs[0].datatype == "BYTES" and parsed[:3] == [
        (np.float32(0.7), 1, "pickle"), (np.float32(0.2), 2, "banana"), (np.float32(0.1), 0, "apple")]


def repeat_request(pb, rid, values, delay_ms, wait_ms, outputs, empty_final=None):
    """A repeat_int32 request as tritonclient builds it: IN INT32 [n], DELAY UINT32 [n], WAIT UINT32 [1]."""
    req = pb.ModelInferRequest(model_name="repeat_int32", id=rid)
    tensors = (("IN", "INT32", np.asarray(values, dtype=np.int32)),
               ("DELAY", "UINT32", np.full(len(values), delay_ms, dtype=np.uint32)),
               ("WAIT", "UINT32", np.array([wait_ms], dtype=np.uint32)))
    for name, datatype, arr in tensors:
        t = req.inputs.add()
        t.name, t.datatype = name, datatype
        t.shape.extend([arr.size])
        req.raw_input_contents.append(arr.tobytes())
    for name in outputs:
        req.outputs.add().name = name
    if empty_final is not None:
        # tritonclient's async_stream_infer(enable_empty_final_response=True) sets this parameter.
        req.parameters["triton_enable_empty_final_response"].bool_param = empty_final
    return req


def is_final(response):
    p = response.parameters.get("triton_final_response")
    return p is not None and p.bool_param


def repeat_values(response, name):
    outs = outputs_of(response)
    if name not in outs:
        return None
    o, raw = outs[name]
    return [int(v) for v in np.frombuffer(raw, dtype=np.int32 if o.datatype == "INT32" else np.uint32)]


def custom_repeat_example(pb, stub, checks, out, delay_ms, wait_ms):
    """simple_grpc_custom_repeat: one request on a stream, IN = 100..109, DELAY and WAIT;
    it reads 10 responses, each OUT holding one value, in order. Without
    enable_empty_final_response no empty final response follows: after the
    client half-closes, the stream ends with nothing more."""
    repeat_count, offset = 10, 100
    requests = queue.Queue()
    requests.put(repeat_request(pb, "", list(range(offset, offset + repeat_count)), delay_ms, wait_ms, ["OUT"]))
    stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=60)
    got, errors, finals, extra = [], [], [], 0
    for msg in stream:
        if len(got) + len(errors) >= repeat_count:
            extra += 1
            continue
        if msg.error_message:
            errors.append(msg.error_message)
        else:
            got.append(repeat_values(msg.infer_response, "OUT"))
            finals.append(is_final(msg.infer_response))
        if len(got) + len(errors) == repeat_count:
            requests.put(None)  # half-close: the stream ends once the request is done
    out["custom_repeat"] = {"OUT": got, "final_flags": finals, "after_last": extra, "errors": errors}
    checks["custom_repeat_outputs"] = not errors and got == [[offset + i] for i in range(repeat_count)]
    checks["custom_repeat_no_empty_final"] = extra == 0 and finals == [False] * repeat_count


def decoupled_final_example(pb, stub, checks, out, delay_ms):
    """tritonclient's decoupled loop (stream with enable_empty_final_response=True, read
    until each request's response carries triton_final_response): many, one and zero
    responses on one stream, OUT and IDX requested."""
    cases = {"many": [4, 5, 6], "one": [9], "zero": []}
    requests = queue.Queue()
    for rid, values in cases.items():
        requests.put(repeat_request(pb, rid, values, delay_ms, 0, ["OUT", "IDX"], empty_final=True))
    stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=60)
    seen, errors, open_ids = {rid: [] for rid in cases}, [], set(cases)
    for msg in stream:
        if msg.error_message:
            errors.append(msg.error_message)
            break
        r = msg.infer_response
        seen[r.id].append({"OUT": repeat_values(r, "OUT"), "IDX": repeat_values(r, "IDX"), "final": is_final(r)})
        if is_final(r):
            open_ids.discard(r.id)
            if not open_ids:
                requests.put(None)
    out["decoupled_final"] = seen
    empty_final = {"OUT": None, "IDX": None, "final": True}
    want = {rid: [{"OUT": [v], "IDX": [i], "final": False} for i, v in enumerate(values)] + [empty_final]
            for rid, values in cases.items()}
    checks["decoupled_final_flags"] = not errors and seen == want


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto"))
    ap.add_argument("--repeat-delay-ms", type=int, default=1000)
    ap.add_argument("--repeat-wait-ms", type=int, default=1000)
    args = ap.parse_args()

    out = {"checks": {}}
    checks = out["checks"]
    with tempfile.TemporaryDirectory(prefix="tb-triton-py-") as tmp:
        pb, pb_grpc, _ = generate_stubs(os.path.abspath(args.proto_dir), tmp)
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"{args.host}:{args.port}"))
        string_example(pb, stub, checks, out)
        int8_example(pb, stub, checks, out)
        sequence_sync_example(pb, stub, checks, out)
        sequence_stream_example(pb, stub, checks, out)
        shm_example(pb, stub, checks, out)
        classification_example(pb, stub, checks, out)
        custom_repeat_example(pb, stub, checks, out, args.repeat_delay_ms, args.repeat_wait_ms)
        decoupled_final_example(pb, stub, checks, out, args.repeat_delay_ms)
    out["ok"] = all(checks.values())
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
