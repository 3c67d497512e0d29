// @ts-check
/** Calls __NAME__ through a real broker: REST (KServe v2 JSON) and the ZeroMQ bridge. */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { ZmqClient, tensorFrom, typedArray } = require('@tensorbroker/sdk');
const { startBroker, waitReady } = require('./broker');

/** @type {{ url: string, zmq: string, stop: () => Promise<void> }} */
let broker;
before(async () => {
  broker = await startBroker();
  await waitReady(broker.url, '__NAME__');
});
after(() => broker?.stop());

test('REST: OUTPUT is twice INPUT', async () => {
  const res = await fetch(`${broker.url}/v2/models/__NAME__/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'INPUT', datatype: 'FP32', shape: [2, 4], data: [1, 2, 3, 4, 5, 6, 7, 8] }] }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.json();
  assert.deepEqual(body.outputs[0].data, [2, 4, 6, 8, 10, 12, 14, 16]);
});

test('ZeroMQ: OUTPUT is twice INPUT', async () => {
  const client = new ZmqClient(broker.zmq, { timeoutMs: 10_000 });
  try {
    const r = await client.infer('__NAME__', [tensorFrom('INPUT', 'FP32', [1, 4], new Float32Array([0.5, 1, 1.5, 2]))]);
    assert.deepEqual([...typedArray(r.outputs[0])], [1, 2, 3, 4]);
  } finally {
    await client.close();
  }
});
