"""Runs a Model as a model copy: speaks the link protocol (proto/README.md) to the broker.

One thread owns the ZeroMQ DEALER socket (ZeroMQ sockets are not thread-safe): it
receives BATCH / HEARTBEAT / END_SEQUENCE / SHUTDOWN, sends heartbeats on time, and
sends every RESULT. ``predict_batch`` runs on a worker thread (one per credit with
``parallel``; otherwise one, batches in arrival order), so a long batch never delays a heartbeat. Workers hand results back
through a queue and wake the socket thread through a socketpair, which is also the
signal wake-up fd: SIGTERM/SIGINT are handled at once, not at the next poll timeout.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Tuple

import zmq

from tensorbroker_client.tensors import from_frame, to_frame

from . import link_pb2 as pb
from .model import BatchContext, BatchItem, Model, SequenceInfo, StreamContext, TensorSpec

#: 2: decoupled models (READY decoupled, RESPONSE), whole batches, timed RESULT.
PROTOCOL_VERSION = 2

_REASONS = {
    pb.EndSequence.REASON_UNSPECIFIED: "unspecified",
    pb.EndSequence.REASON_END: "end",
    pb.EndSequence.REASON_CANCELLED: "cancelled",
    pb.EndSequence.REASON_IDLE: "idle",
}

_EXTRA_FIELDS = ("batchId", "sequence", "endpoint", "loadMs", "maxBatch", "why", "inFlight", "kind")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, like the broker's and the Node SDK's pino logs."""

    def __init__(self, base: Dict[str, Any]):
        super().__init__()
        self.base = base

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {"level": record.levelname.lower(), "time": int(record.created * 1000), **self.base}
        for key in _EXTRA_FIELDS:
            if key in record.__dict__:
                doc[key] = record.__dict__[key]
        doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["err"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def _make_logger(copy_id: str, model: str) -> logging.Logger:
    log = logging.getLogger(f"tensorbroker_model.{copy_id}")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_JsonFormatter({"copyId": copy_id, "model": model}))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(os.environ.get("TB_LOG_LEVEL", "INFO").upper())
    return log


def _spec(s: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=s.name, datatype=s.datatype, shape=[int(d) for d in s.shape], optional=bool(s.optional),
                         labels=[str(x) for x in s.labels])


def _envelope(**kind: Any) -> bytes:
    return pb.Envelope(**kind).SerializeToString()


def _error_text(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__


class _Reply:
    """Frames to send. ``final``: it ends a task (a RESULT); a decoupled RESPONSE is not final."""

    __slots__ = ("frames", "final")

    def __init__(self, frames: List[Any], final: bool = True):
        self.frames = frames
        self.final = final


def _fail(batch_id: int, error: str) -> _Reply:
    return _Reply([_envelope(result=pb.Result(batch_id=batch_id, error=error))])


class _Copy:
    def __init__(self, model: Model, endpoint: str, copy_id: str, model_name: str, heartbeat_ms: int,
                 context: Optional[zmq.Context], log: logging.Logger, signals: bool,
                 routing_id: Optional[str] = None, secret: str = "", broker_timeout_ms: int = 0,
                 curve: Optional[tuple] = None):
        self.model = model
        self.endpoint = endpoint
        self.copy_id = copy_id
        self.model_name = model_name
        self.heartbeat_s = heartbeat_ms / 1000.0
        self.log = log
        self.signals = signals
        self.own_context = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, (routing_id or copy_id).encode())
        if curve:
            # CURVE on a tcp link: the broker's public key and this copy's pair (Z85), set before connect.
            server_key, public_key, secret_key = curve
            self.sock.curve_serverkey = server_key.encode()
            self.sock.curve_publickey = public_key.encode()
            self.sock.curve_secretkey = secret_key.encode()
        self.secret = secret
        self.broker_timeout_s = broker_timeout_ms / 1000.0
        self.sock.setsockopt(zmq.LINGER, 200)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.results: "queue.Queue[_Reply]" = queue.Queue()
        credits = max(1, min(2, int(getattr(model, "credits", 1) or 1)))
        self.credits = credits
        # One worker runs batches in arrival order (a second credit only means the next batch
        # waits here, not on the link); ``parallel`` gives each credit its own thread.
        workers = credits if bool(getattr(model, "parallel", False)) else 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
        self.in_flight = 0
        self.signal_seen: Optional[int] = None
        self.stopping = False
        self.stop_deadline: Optional[float] = None
        self.specs = {s.name: s for s in model.outputs}
        self.states: Dict[str, Tuple[int, Any]] = {}  # sequence id -> (slot, state)
        self.states_lock = threading.Lock()
        self.last_broker_beat = time.monotonic()

    # ---- plumbing -------------------------------------------------------
    def _wake(self) -> None:
        try:
            self.wake_w.send(b"w")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is already pending

    def _drain_wake(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal_seen = signum

    def _send(self, frames: List[Any]) -> None:
        self.sock.send_multipart(frames, copy=False)

    def _state_of(self, seq: SequenceInfo) -> Any:
        with self.states_lock:
            held = self.states.get(seq.id)
            if held is None:
                held = self.states[seq.id] = (seq.slot, self.model.create_state(seq))
            return held[1]

    def _begin_stop(self, why: str, grace_s: Optional[float]) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = None if grace_s is None else time.monotonic() + grace_s
        self.log.info("shutting down", extra={"why": why, "inFlight": self.in_flight})

    # ---- the batch, on a worker thread ------------------------------------
    def _encode(self, out: Any, wanted: List[str], rows: Optional[int]) -> Tuple[Optional[str], List[pb.TensorMeta], List[Any]]:
        """(error, metas, buffers) of a model's outputs; ``rows`` None = whole shapes (no batch dimension)."""
        if not isinstance(out, Mapping):
            return "the model must return a dict of output name -> array", [], []
        metas: List[pb.TensorMeta] = []
        buffers: List[Any] = []
        for name in wanted:
            if name not in out:
                return f"model did not produce output '{name}'", [], []
            spec = self.specs.get(name)
            try:
                datatype, shape, buf = to_frame(out[name], spec.datatype if spec else None)
            except (TypeError, ValueError) as e:
                return f"output '{name}': {_error_text(e)}", [], []
            if rows is not None and (not shape or shape[0] != rows):
                dim = shape[0] if shape else "none"
                return f"output '{name}' has batch dimension {dim} but the batch has {rows} rows", [], []
            metas.append(pb.TensorMeta(name=name, datatype=datatype, shape=shape))
            buffers.append(buf)
        return None, metas, buffers

    def _run_streams(self, batch: pb.Batch, inputs: Dict[str, Any], items: List[BatchItem], input_ns: int) -> _Reply:
        """A decoupled model's batch: predict_stream per item; each yield is sent as a RESPONSE
        (through the results queue, so the socket thread sends it, in order), then the RESULT."""
        batch_id = batch.batch_id
        wanted = list(batch.outputs) or [s.name for s in self.model.outputs]
        log = logging.LoggerAdapter(self.log, {"batchId": str(batch_id)})
        errors: List[str] = []
        output_ns = 0
        start = time.perf_counter_ns()
        for index, item in enumerate(items):
            own = inputs if batch.whole or len(items) == 1 else {k: v[item.slice] for k, v in inputs.items()}
            ctx = StreamContext(batch_id=batch_id, item=item, whole=batch.whole, outputs=wanted, log=log)
            error = ""
            try:
                for out in self.model.predict_stream(own, ctx):
                    t0 = time.perf_counter_ns()
                    bad, metas, buffers = self._encode(out, wanted, None if batch.whole else item.rows)
                    output_ns += time.perf_counter_ns() - t0
                    if bad:
                        error = bad
                        break
                    response = pb.Response(batch_id=batch_id, item=index, tensors=metas)
                    self.results.put(_Reply([_envelope(response=response), *buffers], final=False))
                    self._wake()
            except Exception as e:  # noqa: BLE001 - a model error fails the request, never the copy
                log.warning("predict_stream raised %s", _error_text(e))
                error = _error_text(e)
            errors.append(error)
        compute_ns = time.perf_counter_ns() - start - output_ns
        result = pb.Result(batch_id=batch_id, compute_ns=compute_ns, compute_input_ns=input_ns, compute_output_ns=output_ns,
                           items=[pb.ItemStatus(error=e) for e in errors])
        return _Reply([_envelope(result=result)])

    def _run_batch(self, batch: pb.Batch, inputs: Dict[str, Any], items: List[BatchItem], total_rows: int, input_ns: int = 0) -> _Reply:
        if getattr(self.model, "decoupled", False):
            return self._run_streams(batch, inputs, items, input_ns)
        batch_id = batch.batch_id
        wanted = list(batch.outputs) or [s.name for s in self.model.outputs]
        errors = ["" for _ in items]
        log = logging.LoggerAdapter(self.log, {"batchId": str(batch_id)})
        ctx = BatchContext(batch_id=batch_id, items=items, total_rows=total_rows, outputs=wanted, log=log,
                           whole=batch.whole, _item_errors=errors, _state_of=self._state_of)
        start = time.perf_counter_ns()
        try:
            out = self.model.predict_batch(inputs, ctx)
        except Exception as e:  # noqa: BLE001 - any model error fails the batch, never the copy
            log.warning("predict_batch raised %s", _error_text(e), exc_info=self.log.isEnabledFor(logging.DEBUG))
            return _fail(batch_id, _error_text(e))
        compute_ns = time.perf_counter_ns() - start
        if not isinstance(out, Mapping):
            return _fail(batch_id, "predict_batch must return a dict of output name -> array")
        output_start = time.perf_counter_ns()
        metas: List[pb.TensorMeta] = []
        buffers: List[Any] = []
        if not (all(errors) and len(out) == 0):
            bad, metas, buffers = self._encode(out, wanted, None if batch.whole else total_rows)
            if bad:
                return _fail(batch_id, bad)
        result = pb.Result(batch_id=batch_id, compute_ns=compute_ns, tensors=metas,
                           compute_input_ns=input_ns, compute_output_ns=time.perf_counter_ns() - output_start,
                           items=[pb.ItemStatus(error=e) for e in errors])
        return _Reply([_envelope(result=result), *buffers])

    def _end_sequence(self, seq_id: str, reason: str, slot: int, state: Any) -> None:
        try:
            self.model.end_sequence(seq_id, reason, slot, state)
        except Exception:  # noqa: BLE001
            self.log.exception("end_sequence failed", extra={"sequence": seq_id})

    def _submit(self, fn: Any, *args: Any) -> None:
        self.in_flight += 1

        def task() -> None:
            try:
                reply = fn(*args)
            except BaseException as e:  # noqa: BLE001 - a bug here must still answer the batch
                self.log.exception("worker failed")
                reply = None if fn is self._end_sequence else _fail(args[0].batch_id, _error_text(e))
            self.results.put(reply if reply is not None else _Reply([]))
            self._wake()

        self.pool.submit(task)

    # ---- messages, on the socket thread -----------------------------------
    def _on_batch(self, batch: pb.Batch, frames: List[zmq.Frame]) -> None:
        batch_id = batch.batch_id
        if self.stopping:
            self.log.warning("batch after shutdown refused", extra={"batchId": str(batch_id)})
            self._send([_envelope(result=pb.Result(batch_id=batch_id, error="model copy is shutting down"))])
            return
        items: List[BatchItem] = []
        offset = 0
        for it in batch.items:
            seq = None
            if it.HasField("sequence") and it.sequence.id:
                s = it.sequence
                seq = SequenceInfo(id=s.id, slot=s.slot, start=s.start, end=s.end)
            items.append(BatchItem(request_id=it.request_id, rows=it.rows, offset=offset, sequence=seq))
            offset += it.rows
        total_rows = offset
        # A sequence's first request starts from a fresh state (made lazily by ctx.state).
        with self.states_lock:
            for it in items:
                if it.sequence is not None and it.sequence.start:
                    self.states.pop(it.sequence.id, None)
        if len(frames) != len(batch.tensors):
            self._send(_fail(batch_id, f"batch lists {len(batch.tensors)} tensors but carries {len(frames)} frames").frames)
            return
        inputs: Dict[str, Any] = {}
        input_start = time.perf_counter_ns()
        try:
            for meta, frame in zip(batch.tensors, frames):
                shape = [int(d) for d in meta.shape]
                # Numeric tensors: a read-only numpy view of the received frame, no copy.
                arr = from_frame(meta.datatype, shape, frame.buffer)
                arr.flags.writeable = False  # the frame is shared with nobody, but inputs are not scratch space
                if not batch.whole and (not shape or shape[0] != total_rows):
                    raise ValueError(f"input '{meta.name}' has batch dimension {shape[0] if shape else 'none'} but the batch has {total_rows} rows")
                inputs[meta.name] = arr
        except ValueError as e:
            self._send(_fail(batch_id, _error_text(e)).frames)
            return
        self._submit(self._run_batch, batch, inputs, items, total_rows, time.perf_counter_ns() - input_start)

    def _on_message(self, frames: List[zmq.Frame]) -> None:
        env = pb.Envelope()
        try:
            env.ParseFromString(frames[0].bytes)
        except Exception as e:  # noqa: BLE001 - DecodeError, but never die of a bad message
            self.log.warning("dropped a bad message: %s", _error_text(e))
            return
        kind = env.WhichOneof("kind")
        if kind == "batch":
            self._on_batch(env.batch, frames[1:])
        elif kind == "heartbeat":
            pass  # last_broker_beat is set for every message
        elif kind == "end_sequence":
            # The state goes at once, before any later batch runs; a late END_SEQUENCE of an
            # earlier sequence with the same id (another slot) leaves the current one alone.
            es = env.end_sequence
            with self.states_lock:
                held = self.states.get(es.id)
                if held is not None and held[0] == es.slot:
                    del self.states[es.id]
                else:
                    held = None
            self._submit(self._end_sequence, es.id, _REASONS.get(es.reason, "unspecified"), es.slot,
                         held[1] if held is not None else None)
        elif kind == "shutdown":
            grace = env.shutdown.grace_ms / 1000.0 if env.shutdown.grace_ms else None
            self._begin_stop(f"broker shutdown: {env.shutdown.reason}", grace)
        else:
            self.log.warning("unexpected message", extra={"kind": kind})

    def _flush_results(self) -> None:
        while True:
            try:
                reply = self.results.get_nowait()
            except queue.Empty:
                return
            if reply.final:
                self.in_flight -= 1
            if reply.frames:
                self._send(reply.frames)

    # ---- life cycle ------------------------------------------------------
    def run(self) -> int:
        old_handlers: Dict[int, Any] = {}
        old_wakeup = None
        if self.signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
            old_wakeup = signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        try:
            return self._run()
        finally:
            if self.signals:
                signal.set_wakeup_fd(old_wakeup if old_wakeup is not None else -1)
                for sig, h in old_handlers.items():
                    signal.signal(sig, h)
            self.pool.shutdown(wait=False)
            self.sock.close()  # linger 200 ms: the last RESULTs and the SHUTDOWN are flushed
            if self.own_context:
                self.ctx.term()
            self.wake_r.close()
            self.wake_w.close()

    def _run(self) -> int:
        self.sock.connect(self.endpoint)
        self.log.info("connected", extra={"endpoint": self.endpoint})
        t0 = time.monotonic()
        try:
            self.model.load()
        except Exception:  # noqa: BLE001
            self.log.exception("load failed")
            return 1
        if self.signal_seen is not None:
            self._send([_envelope(shutdown=pb.Shutdown(reason="sigterm"))])
            self.log.info("shutting down", extra={"why": f"signal {self.signal_seen} during load"})
            return 0
        m = self.model
        ready = pb.Ready(
            protocol_version=PROTOCOL_VERSION, model=self.model_name, version=str(m.version or ""),
            max_batch=int(m.max_batch), credits=self.credits, pid=os.getpid(),
            max_sequences=int(getattr(m, "max_sequences", 0) or 0), secret=self.secret,
            decoupled=bool(getattr(m, "decoupled", False)),
            inputs=[_spec(s) for s in m.inputs], outputs=[_spec(s) for s in m.outputs],
        )
        self._send([_envelope(ready=ready)])
        self.last_broker_beat = time.monotonic()  # the broker heartbeats once it has our READY
        self.log.info("ready", extra={"loadMs": int((time.monotonic() - t0) * 1000), "maxBatch": int(m.max_batch)})

        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        while True:
            now = time.monotonic()
            wait_s = next_beat - now
            if self.stop_deadline is not None:
                wait_s = min(wait_s, self.stop_deadline - now)
            if self.broker_timeout_s > 0:
                wait_s = min(wait_s, self.last_broker_beat + self.broker_timeout_s - now)
            events = dict(poller.poll(max(0, int(wait_s * 1000) + 1)))
            if self.wake_r in events:
                self._drain_wake()
            if self.signal_seen is not None and not self.stopping:
                self._send([_envelope(shutdown=pb.Shutdown(reason="sigterm"))])
                self._begin_stop(f"signal {self.signal_seen}", None)
            self._flush_results()
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.last_broker_beat = time.monotonic()  # any message from the broker
                    self._on_message(frames)
            now = time.monotonic()
            if self.broker_timeout_s > 0 and not self.stopping and now - self.last_broker_beat > self.broker_timeout_s:
                self.log.error("no message from the broker within TB_BROKER_TIMEOUT_MS: the broker is gone; exiting",
                               extra={"why": f"silent for {int((now - self.last_broker_beat) * 1000)} ms"})
                return 1
            if now >= next_beat:
                self._send([_envelope(heartbeat=pb.Heartbeat(time_ms=int(time.time() * 1000)))])
                next_beat = now + self.heartbeat_s
            if self.stopping:
                self._flush_results()
                if self.in_flight == 0:
                    return 0
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    self.log.warning("grace period over with batches in flight", extra={"inFlight": self.in_flight})
                    return 0


def serve(model: Model, endpoint: Optional[str] = None, copy_id: Optional[str] = None,
          model_name: Optional[str] = None, heartbeat_ms: Optional[int] = None,
          context: Optional[zmq.Context] = None, exit: bool = True,  # noqa: A002
          routing_id: Optional[str] = None, secret: Optional[str] = None,
          broker_timeout_ms: Optional[int] = None) -> int:
    """Connects to the broker, calls ``model.load()``, sends READY and answers batches
    until the broker sends SHUTDOWN or the process gets SIGTERM/SIGINT.

    Each argument defaults to its environment variable: ``TB_ENDPOINT`` (required),
    ``TB_COPY_ID``, ``TB_MODEL`` then ``model.name``, ``TB_HEARTBEAT_MS`` then 1000,
    ``TB_ROUTING_ID`` then the copy id (the DEALER's routing id), ``TB_COPY_SECRET`` (sent
    in READY, removed from ``os.environ`` once read), ``TB_BROKER_TIMEOUT_MS`` then
    max(30 s, 10 heartbeats): after READY, the copy exits (code 1) when it hears nothing
    from the broker for that long (the broker is gone); 0 = never.
    With ``exit=True`` (default) the process exits with the code (0 after a clean
    shutdown, 1 when ``load()`` failed); otherwise the code is returned.
    """
    endpoint = endpoint or os.environ.get("TB_ENDPOINT")
    copy_id = copy_id or os.environ.get("TB_COPY_ID") or f"copy-{os.getpid()}"
    model_name = model_name or os.environ.get("TB_MODEL") or getattr(model, "name", None) or "model"
    if heartbeat_ms is None:
        try:
            heartbeat_ms = int(os.environ.get("TB_HEARTBEAT_MS", "") or 1000)
        except ValueError:
            heartbeat_ms = 1000
    if not endpoint:
        raise RuntimeError("TB_ENDPOINT is not set")
    routing_id = routing_id or os.environ.get("TB_ROUTING_ID") or copy_id
    if secret is None:
        secret = os.environ.get("TB_COPY_SECRET", "")
    os.environ.pop("TB_COPY_SECRET", None)  # child processes of the model never see it
    if broker_timeout_ms is None:
        try:
            broker_timeout_ms = int(os.environ.get("TB_BROKER_TIMEOUT_MS", "") or max(30000, 10 * heartbeat_ms))
        except ValueError:
            broker_timeout_ms = max(30000, 10 * heartbeat_ms)
    curve = _curve_from_env()
    log = _make_logger(copy_id, model_name)
    signals = threading.current_thread() is threading.main_thread()
    copy = _Copy(model, endpoint, copy_id, model_name, max(10, heartbeat_ms), context, log, signals,
                 routing_id=routing_id, secret=secret, broker_timeout_ms=max(0, broker_timeout_ms),
                 curve=curve)
    code = copy.run()
    if not exit:
        return code
    logging.shutdown()
    if copy.in_flight > 0:
        os._exit(code)  # a batch still running past the grace period must not hold the process
    sys.exit(code)


def _curve_from_env() -> Optional[tuple]:
    """(server key, public key, secret key) from TB_CURVE_SERVER_KEY, TB_CURVE_PUBLIC_KEY and
    TB_CURVE_SECRET_KEY (removed from os.environ once read), or None for a plain link. Without its
    own pair the copy makes one: encrypted, but refused by a broker that allows known keys only."""
    server_key = os.environ.get("TB_CURVE_SERVER_KEY")
    public_key = os.environ.get("TB_CURVE_PUBLIC_KEY")
    secret_key = os.environ.pop("TB_CURVE_SECRET_KEY", None)
    if not server_key:
        return None
    if not (public_key and secret_key):
        pub, sec = zmq.curve_keypair()
        public_key, secret_key = pub.decode(), sec.decode()
    return (server_key, public_key, secret_key)


__all__ = ["serve", "PROTOCOL_VERSION"]
