/**
 * The cause of issue 11's "RST_STREAM with code 2" failures, pinned down
 * (bridges/grpc/README.md): Node's HTTP/2 server (nghttp2) limits the
 * RST_STREAM frames a client may send on one connection (Rapid Reset,
 * CVE-2023-44487: a burst of 1000, then 33 per second). A grpc-js client
 * cancels every call whose deadline passes with a RST_STREAM, so a channel
 * with many expired 0-7 ms deadlines exceeds it; the server then ends the
 * connection with GOAWAY INTERNAL_ERROR (code 2) and every call still on it
 * fails with "Received RST_STREAM with code 2 ... Session closed with error
 * code 2". Here with a raw HTTP/2 client that cancels ServerLive calls: the
 * same GOAWAY after about 1000 resets, and a new connection is served.
 */
import http2 from 'node:http2';
import { simpleModel, startTestBroker, type TestBroker } from '../helpers/broker';
import { GrpcTestClient } from '../helpers/grpc-client';

let b: TestBroker;

beforeAll(async () => {
  b = await startTestBroker({ models: { simple: simpleModel({ min_replicas: 0 }) } });
});

afterAll(async () => {
  await b?.stop();
});

test('more than ~1000 cancelled calls on one connection: GOAWAY code 2 from the server; a new connection is served', async () => {
  const session = http2.connect(`http://127.0.0.1:${b.running.ports.grpc}`);
  session.on('error', () => undefined); // "Session closed with error code 2", asserted below
  const goaway = new Promise<number>((resolve) => session.on('goaway', (code) => resolve(code)));
  let sent = 0;
  let ended = false;
  void goaway.then(() => (ended = true));
  // One call after another, each cancelled at once (as a client does when a deadline passes).
  for (let i = 0; i < 2000 && !ended && !session.destroyed; i++) {
    const s = session.request({
      ':method': 'POST', ':path': '/inference.GRPCInferenceService/ServerLive',
      'content-type': 'application/grpc', te: 'trailers',
    });
    s.on('error', () => undefined);
    s.end(Buffer.alloc(5)); // an empty ServerLiveRequest
    s.close(http2.constants.NGHTTP2_CANCEL);
    sent++;
    if (i % 100 === 99) await new Promise((r) => setImmediate(r));
  }
  expect(await goaway).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
  expect(sent).toBeGreaterThanOrEqual(1000);
  expect(sent).toBeLessThan(2000);
  session.destroy();

  const fresh = new GrpcTestClient(b.running.ports.grpc);
  try {
    expect((await fresh.unary('serverLive', {})).live).toBe(true);
  } finally {
    fresh.close();
  }
});
