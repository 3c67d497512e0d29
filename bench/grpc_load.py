"""A second gRPC load generator for bench/grpc.ts: Python grpcio (C core), asyncio.

Closed loop: CONCURRENCY callers, each with one unary ModelInfer outstanding on
one channel, for SECONDS after WARMUP seconds. The request is the bench's
pre-encoded ModelInferRequest (hex on stdin); replies stay bytes (no stubs, no
decoding), as in the grpc-js client. Prints one JSON line: ok, errors, p50/p99
(ms, every round trip kept), seconds and this process's CPU seconds over the
measured window.

usage: python3 grpc_load.py PORT CONCURRENCY SECONDS WARMUP < request.hex
"""
import asyncio
import json
import resource
import sys
import time

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(port: int, concurrency: int, seconds: float, warmup: float, request: bytes) -> dict:
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        await call(request, timeout=30)

        async def loop(until: float, keep: list | None, errs: list) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                try:
                    await call(request, timeout=30)
                except grpc.RpcError as e:
                    errs.append(str(e.code()))
                    continue
                t1 = time.perf_counter()
                if keep is not None and t1 <= until:
                    keep.append((t1 - t0) * 1000)

        await asyncio.gather(*(loop(time.perf_counter() + warmup, None, []) for _ in range(concurrency)))
        lat: list = []
        errs: list = []
        c0 = cpu_seconds()
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(loop(until, lat, errs) for _ in range(concurrency)))
        cpu = cpu_seconds() - c0
        lat.sort()
        at = lambda p: lat[min(len(lat) - 1, max(0, -(-len(lat) * p // 100) - 1))] if lat else float("nan")
        return {"ok": len(lat), "errors": len(errs), "firstError": errs[0] if errs else None, "seconds": seconds,
                "p50": at(50), "p99": at(99), "mean": sum(lat) / len(lat) if lat else float("nan"), "cpuSeconds": cpu}


def main() -> None:
    port, concurrency, seconds, warmup = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    request = bytes.fromhex(sys.stdin.read().strip())
    print(json.dumps(asyncio.run(run(port, concurrency, seconds, warmup, request))))


if __name__ == "__main__":
    main()
