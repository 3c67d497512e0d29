"""Calls __NAME__ through a real broker (REST, KServe v2 JSON) and its ZeroMQ bridge.

The broker command is $TENSORBROKER (default `tensorbroker`, e.g.
TENSORBROKER="node /path/to/tensorbroker/dist/app/cli.js"); it finds Redis as it
always does ($TB_REDIS_URL, default redis://127.0.0.1:6379). Run: python -m unittest -v
"""
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class BrokerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.socket_dir = tempfile.mkdtemp(prefix="tb-test-")
        cmd = shlex.split(os.environ.get("TENSORBROKER", "tensorbroker")) + [
            "serve", "--models", os.path.join(HERE, "models.yaml"), "--runtime", "process",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--zmq-port", "0",
            "--socket-dir", cls.socket_dir, "--broker-id", "test-%d" % os.getpid()]
        env = dict(os.environ, TB_REDIS_PREFIX="test-%d:" % os.getpid())
        cls.broker = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        serving = {}
        found = threading.Event()

        def read():  # the serving line gives the ports; later lines are drained so the broker never blocks
            for raw in cls.broker.stdout:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if line.get("msg") == "tensorbroker serving":
                    serving.update(line)
                    found.set()
        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            cls.tearDownClass()
            raise RuntimeError("the broker did not start in time")
        cls.url = "http://127.0.0.1:%d" % serving["http"]
        cls.zmq = "tcp://127.0.0.1:%d" % serving["zmq"]
        deadline = time.monotonic() + 60
        while True:  # until a copy of the model has sent READY
            try:
                with urllib.request.urlopen(cls.url + "/v2/models/__NAME__/ready") as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                cls.tearDownClass()
                raise RuntimeError("__NAME__ not ready after 60 s")
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        cls.broker.terminate()
        cls.broker.wait(30)
        shutil.rmtree(cls.socket_dir, ignore_errors=True)

    def test_rest(self):
        body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
        req = urllib.request.Request(self.url + "/v2/models/__NAME__/infer", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            out = json.load(r)["outputs"][0]
        self.assertEqual(out["data"], [2, 4, 6, 8, 10, 12, 14, 16])

    def test_zmq(self):
        from tensorbroker_client import Client
        with Client(self.zmq) as client:
            out = client.infer("__NAME__", {"INPUT": np.array([[0.5, 1, 1.5, 2]], dtype=np.float32)}, timeout=10)
        np.testing.assert_array_equal(out["OUTPUT"], [[1, 2, 3, 4]])


if __name__ == "__main__":
    unittest.main()
