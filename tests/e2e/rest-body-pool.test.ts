/**
 * Pooled REST bodies (bridges/rest/body-pool.ts) are reused safely: with the
 * pool's poison on (a released slab is overwritten with 0xDB), many concurrent
 * 150 KB binary requests through the `identity` model each get back exactly
 * their own bytes, while slabs are reused under them and some requests end
 * early (a 1 ms deadline) with their batch still on the way to the copy.
 * A reused or early-released body shows as another request's bytes or 0xDB.
 */
import { randomBytes } from 'node:crypto';
import { modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const BYTES = 150 * 1024;

function binaryRequest(data: Buffer, timeoutUs?: number): { body: Buffer; headerLength: number } {
  const header = Buffer.from(JSON.stringify({
    inputs: [{ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, data.length], parameters: { binary_data_size: data.length } }],
    outputs: [{ name: 'OUT_UINT8', parameters: { binary_data: true } }],
    ...(timeoutUs !== undefined ? { parameters: { timeout: timeoutUs } } : {}),
  }));
  return { body: Buffer.concat([header, data]), headerLength: header.length };
}

/** The raw OUT_UINT8 bytes of a binary reply. */
function outputBytes(reply: Buffer, headerLength: number): Buffer {
  const header = JSON.parse(reply.subarray(0, headerLength).toString()) as { outputs: { name: string; parameters?: { binary_data_size?: number } }[] };
  let off = headerLength;
  for (const o of header.outputs) {
    const n = o.parameters?.binary_data_size ?? 0;
    if (o.name === 'OUT_UINT8') return reply.subarray(off, off + n);
    off += n;
  }
  throw new Error(`no OUT_UINT8 in ${JSON.stringify(header)}`);
}

describe('REST body pool: reused buffers never leak between requests', () => {
  let b: TestBroker;
  const saved = process.env.TB_BODY_POOL_POISON;

  beforeAll(async () => {
    process.env.TB_BODY_POOL_POISON = '1';
    b = await startTestBroker({
      models: {
        // batch_size 1: each batch sends a view of the request's pooled body (no copy) over the link.
        identity: { command: ['node', modelMain('identity')], batch_size: 1, max_wait_ms: 0, queue_capacity: 256 },
        // batch_size 8: rows of several bodies joined into one batch.
        'identity-b8': { command: ['node', modelMain('identity')], batch_size: 8, max_wait_ms: 2, queue_capacity: 256 },
      },
    });
    await Promise.all(['identity', 'identity-b8'].map((m) => waitReady(b, m)));
  });
  afterAll(async () => {
    await b?.stop();
    if (saved === undefined) delete process.env.TB_BODY_POOL_POISON;
    else process.env.TB_BODY_POOL_POISON = saved;
  });

  test.each(['identity', 'identity-b8'])('%s: 16 clients × 12 requests of random 150 KB, every answer is its own bytes', async (model) => {
    const pool = b.running.bodyPool;
    const reused0 = pool.reused;
    const wrong: string[] = [];
    let ok = 0;
    let early = 0;
    const client = async (c: number) => {
      for (let i = 0; i < 12; i++) {
        const data = randomBytes(BYTES);
        // Every fourth request has a 1 ms deadline: it may be answered 504 while its batch is still queued for or at the copy.
        const short = (c + i) % 4 === 0;
        const { body, headerLength } = binaryRequest(data, short ? 1000 : undefined);
        const res = await fetch(`${b.url}/v2/models/${model}/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(headerLength) },
          body,
        });
        const reply = Buffer.from(await res.arrayBuffer());
        if (res.status === 200) {
          const out = outputBytes(reply, Number(res.headers.get('inference-header-content-length')));
          if (!out.equals(data)) wrong.push(`client ${c} request ${i}: ${out.length} bytes, first ${out.subarray(0, 8).toString('hex')} want ${data.subarray(0, 8).toString('hex')}`);
          else ok++;
        } else if (short && res.status === 504) early++;
        else wrong.push(`client ${c} request ${i}: HTTP ${res.status} ${reply.toString().slice(0, 200)}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, (_, c) => client(c)));
    expect(wrong).toEqual([]);
    expect(ok + early).toBe(16 * 12);
    expect(ok).toBeGreaterThan(16 * 12 / 2);
    // The pool did lend slabs again (otherwise this test could not fail).
    expect(pool.reused - reused0).toBeGreaterThan(50);
  });
});
