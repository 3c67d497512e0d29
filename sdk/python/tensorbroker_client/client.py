"""Synchronous client of the broker's ZeroMQ bridge (proto/client.proto).

A DEALER socket; each request is [InferRequest header, tensor frame, ...] and
each reply [InferReply header, output frame, ...], matched by request id.
``infer_many`` keeps up to ``window`` requests outstanding at once.
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import time
import uuid
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import zmq

from google.protobuf import json_format

from . import client_pb2 as pb

# protobuf >= 26 renamed including_default_value_fields.
_NEW_JSON_FORMAT = "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters


def _as_dict(m: Any) -> Dict[str, Any]:
    """A JobInfo as a dict with every field (proto names), on old and new protobuf runtimes."""
    if _NEW_JSON_FORMAT:
        return json_format.MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json_format.MessageToDict(m, preserving_proto_field_name=True, including_default_value_fields=True)
from .tensors import from_frame, to_frame


class TensorBrokerError(Exception):
    """A failed request. ``code`` is the broker's error code: INVALID_ARGUMENT,
    NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
    PAYLOAD_TOO_LARGE, INTERNAL, ..."""

    def __init__(self, code: str, message: str, retry_after_ms: Optional[int] = None, request_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id


def _set_parameter(p: "pb.InferParameter", key: str, v: Any) -> None:
    if isinstance(v, (bool, np.bool_)):
        p.bool_param = bool(v)
    elif isinstance(v, (int, np.integer)):
        p.int64_param = int(v)
    elif isinstance(v, (float, np.floating)):
        p.double_param = float(v)
    elif isinstance(v, str):
        p.string_param = v
    else:
        raise TypeError(f"parameter {key!r}: unsupported type {type(v).__name__}")


class Client:
    """Client(endpoint, window=64): not thread-safe (one socket); use one per thread.

    ``endpoint`` is the bridge's address, e.g. ``tcp://127.0.0.1:7787``.
    """

    def __init__(self, endpoint: str, window: int = 64, context: Optional[zmq.Context] = None, api_key: Optional[str] = None):
        """``api_key`` is sent with every request (a ``tb-api-key:`` frame): an
        API key, or the admin token for ``list_jobs``."""
        self._key_frame = None if api_key is None else b"tb-api-key:" + api_key.encode()
        if int(window) < 1:
            raise ValueError("window must be at least 1")
        self.endpoint = endpoint
        self.window = int(window)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._prefix = f"py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Optional[Sequence[str]] = None,
        parameters: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        version: str = "",
        id: Optional[str] = None,
    ) -> Dict[str, np.ndarray]:
        """One request; returns ``{output name: array}`` or raises TensorBrokerError.

        ``inputs`` maps input names to numpy arrays (datatype from the dtype:
        int32 -> INT32, float32 -> FP32, object/bytes/str -> BYTES, ...).
        ``timeout`` in seconds is sent to the broker as the request's deadline
        and bounds the wait here (DEADLINE_EXCEEDED)."""
        request = dict(model=model, inputs=inputs, outputs=outputs, parameters=parameters,
                       timeout=timeout, version=version, id=id)
        return self.infer_many([request])[0]

    def infer_many(self, requests: Iterable[Mapping[str, Any]], return_exceptions: bool = False) -> List[Any]:
        """Sends several requests, at most ``window`` outstanding, and returns their
        results in request order. Each request is a dict with the arguments of
        ``infer`` (``model``, ``inputs`` required). A failed request raises its
        TensorBrokerError, or with ``return_exceptions=True`` takes its place in
        the list."""
        reqs = list(requests)
        results: List[Any] = [None] * len(reqs)
        done = [False] * len(reqs)
        pending: Dict[str, tuple] = {}  # id -> (index, deadline or None)
        ids = set()
        nxt = 0
        remaining = len(reqs)

        def finish(i: int, value: Any) -> None:
            nonlocal remaining
            results[i] = value
            done[i] = True
            remaining -= 1
            if isinstance(value, TensorBrokerError) and not return_exceptions:
                raise value

        while remaining > 0:
            while nxt < len(reqs) and len(pending) < self.window:
                i, r = nxt, reqs[nxt]
                nxt += 1
                rid = str(r.get("id") or f"{self._prefix}-{next(self._seq)}")
                if rid in ids:
                    finish(i, TensorBrokerError("INVALID_ARGUMENT", f"request id {rid!r} is used twice", request_id=rid))
                    continue
                ids.add(rid)
                timeout = r.get("timeout")
                self._send(rid, r)
                pending[rid] = (i, None if timeout is None else time.monotonic() + float(timeout))
            if not pending:
                continue
            deadlines = [d for (_, d) in pending.values() if d is not None]
            wait_ms = -1 if not deadlines else max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)
            if self._sock.poll(wait_ms, zmq.POLLIN):
                frames = self._sock.recv_multipart(copy=False)
                try:
                    reply = pb.InferReply.FromString(frames[0].bytes)
                except Exception:  # not a reply of this protocol: nothing to match it to
                    reply = None
                entry = None if reply is None else pending.pop(reply.id, None)
                if entry is not None:  # else: a late reply to a request that timed out here
                    finish(entry[0], self._outcome(reply, frames[1:]))
            now = time.monotonic()
            for rid, (i, d) in list(pending.items()):
                if d is not None and now >= d:
                    del pending[rid]
                    finish(i, TensorBrokerError("DEADLINE_EXCEEDED", "no reply within the timeout", request_id=rid))
        return results

    def _send(self, rid: str, r: Mapping[str, Any]) -> None:
        header = pb.InferRequest(id=rid, model=str(r["model"]), version=str(r.get("version") or ""))
        frames: List[Any] = [None]
        inputs = r["inputs"]
        if not isinstance(inputs, Mapping):
            raise TypeError("inputs must be a dict of name -> numpy array")
        for name, value in inputs.items():
            datatype, shape, buf = to_frame(value)
            header.inputs.add(name=name, datatype=datatype, shape=shape)
            frames.append(buf)
        for name in r.get("outputs") or ():
            header.outputs.append(name)
        params = dict(r.get("parameters") or {})
        timeout = r.get("timeout")
        if timeout is not None and "timeout" not in params:
            params["timeout"] = max(1, int(float(timeout) * 1_000_000))  # microseconds, KServe
        for key, v in params.items():
            _set_parameter(header.parameters[key], key, v)
        if r.get("job") is not None:
            header.job.CopyFrom(r["job"])
        frames[0] = header.SerializeToString()
        if self._key_frame is not None:
            frames.insert(0, self._key_frame)
        self._sock.send_multipart(frames, copy=False)

    # Asynchronous jobs (proto/client.proto JobCall). Jobs are dicts of JobInfo's fields.

    def submit_job(self, model: str, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None,
                   priority: str = "", ttl_seconds: float = 0, timeout_seconds: float = 0, max_attempts: int = 0,
                   webhook_url: str = "", metadata: Optional[Mapping[str, Any]] = None, idempotency_key: str = "",
                   version: str = "") -> Dict[str, Any]:
        """Queues a job; returns it (``id``, ``status``, ...) at once."""
        call = pb.JobCall(op=pb.JobCall.SUBMIT, priority=priority, ttl_seconds=ttl_seconds, timeout_seconds=timeout_seconds,
                          max_attempts=max_attempts, webhook_url=webhook_url, idempotency_key=idempotency_key,
                          metadata_json="" if metadata is None else json.dumps(dict(metadata)))
        return self._job_call(call, model=model, inputs=inputs, outputs=outputs, version=version)["job"]

    def get_job(self, job_id: str) -> Dict[str, Any]:
        return self._job_call(pb.JobCall(op=pb.JobCall.GET, job_id=job_id))["job"]

    def cancel_job(self, job_id: str) -> Dict[str, Any]:
        return self._job_call(pb.JobCall(op=pb.JobCall.CANCEL, job_id=job_id))["job"]

    def job_result(self, job_id: str) -> Dict[str, Any]:
        """``{"job": ..., "outputs": {name: array}}``; outputs only when job["result_state"] == "succeeded"."""
        return self._job_call(pb.JobCall(op=pb.JobCall.RESULT, job_id=job_id))

    def watch_job(self, job_id: str, wait_ms: int = 25_000) -> Iterator[Dict[str, Any]]:
        """Yields the job now, then each time its status or attempts change, until a final status.
        Each step is one WATCH call the broker holds until a change or ``wait_ms`` (a long poll)."""
        seen_status, seen_attempts = "", 0
        while True:
            job = self._job_call(pb.JobCall(op=pb.JobCall.WATCH, job_id=job_id, seen_status=seen_status,
                                            seen_attempts=seen_attempts, wait_ms=wait_ms))["job"]
            if job["status"] != seen_status or job["attempts"] != seen_attempts:
                seen_status, seen_attempts = job["status"], job["attempts"]
                yield job
            if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
                return

    def list_jobs(self, model: str = "", status: str = "", cursor: str = "", limit: int = 0) -> Dict[str, Any]:
        """``{"jobs": [...], "next_cursor": "..."}``, newest first (needs the admin token as api_key)."""
        return self._job_call(pb.JobCall(op=pb.JobCall.LIST, status=status, cursor=cursor, limit=limit), model=model)

    def _job_call(self, call: "pb.JobCall", model: str = "", inputs: Optional[Mapping[str, Any]] = None,
                  outputs: Optional[Sequence[str]] = None, version: str = "") -> Dict[str, Any]:
        rid = f"{self._prefix}-{next(self._seq)}"
        self._send(rid, dict(model=model, inputs=inputs or {}, outputs=outputs, version=version, job=call))
        while True:
            frames = self._sock.recv_multipart(copy=False)
            try:
                reply = pb.InferReply.FromString(frames[0].bytes)
            except Exception:
                continue
            if reply.id != rid:
                continue  # a late reply to an earlier request
            out = self._outcome(reply, frames[1:])
            if isinstance(out, TensorBrokerError):
                raise out
            result: Dict[str, Any] = {"jobs": [_as_dict(j) for j in reply.jobs], "next_cursor": reply.next_cursor}
            if reply.HasField("job"):
                result["job"] = _as_dict(reply.job)
                result["outputs"] = out
            return result

    @staticmethod
    def _outcome(reply: "pb.InferReply", frames: Sequence[zmq.Frame]) -> Any:
        status = reply.status
        if status.code != "OK":
            return TensorBrokerError(status.code or "INTERNAL", status.message or "reply without status",
                                     status.retry_after_ms or None, reply.id)
        if len(reply.outputs) != len(frames):
            return TensorBrokerError("INTERNAL", f"reply lists {len(reply.outputs)} outputs but has {len(frames)} frames",
                                     request_id=reply.id)
        try:
            return {m.name: from_frame(m.datatype, list(m.shape), f.buffer) for m, f in zip(reply.outputs, frames)}
        except ValueError as e:
            return TensorBrokerError("INTERNAL", f"malformed reply: {e}", request_id=reply.id)
