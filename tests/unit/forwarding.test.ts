/**
 * The forwarding pair (cluster/forwarder.ts → cluster/forward-route.ts) over a
 * real loopback HTTP server: what the owner's broker.infer() receives is the
 * request the sender had, including the fields the batcher orders by.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import type { InferRequest, InferResult } from '../../core/types';
import { forwardRoute } from '../../cluster/forward-route';
import { HttpForwarder } from '../../cluster/forwarder';

const tensor = (v: number[]) => ({ name: 'X', datatype: 'INT32' as const, shape: [1, v.length], data: Buffer.from(new Int32Array(v).buffer) });

describe('forwarding between brokers', () => {
  let app: FastifyInstance;
  let url: string;
  const seen: InferRequest[] = [];
  const forwarder = new HttpForwarder({ self: 'a', maxFrames: 8, token: 't0ken' });

  beforeAll(async () => {
    // Only infer() is called by the route: the rest of BrokerApi stays unimplemented on purpose.
    const broker = {
      infer: async (req: InferRequest): Promise<InferResult> => {
        seen.push(req);
        return { id: req.id, model: req.model, version: '1', outputs: req.inputs };
      },
    } as unknown as BrokerApi;
    app = Fastify();
    await app.register(forwardRoute, { broker, bodyLimit: 1 << 20, maxFrames: 8, token: 't0ken' });
    url = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(() => app.close());

  test('a job (background request) stays background on the owner, with its priority and inputs', async () => {
    const res = await forwarder.forward({ broker: 'b', url }, { id: 'j1', model: 'm', inputs: [tensor([1, 2, 3])], priority: 3, background: true }, Date.now() + 5000);
    const got = seen.at(-1)!;
    expect(got).toMatchObject({ id: 'j1', model: 'm', priority: 3, background: true, forwardedBy: 'a' });
    expect(Array.from(new Int32Array(new Uint8Array(res.outputs[0].data).slice().buffer))).toEqual([1, 2, 3]);
  });

  test('a live request arrives live', async () => {
    await forwarder.forward({ broker: 'b', url }, { id: 'l1', model: 'm', inputs: [tensor([4])] }, Date.now() + 5000);
    expect(seen.at(-1)!.background).toBeUndefined();
    expect(seen.at(-1)!.priority).toBeUndefined();
  });
});
