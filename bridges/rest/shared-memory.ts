/**
 * Triton's shared-memory endpoints on REST: system shared memory over the
 * registry both bridges share (bridges/shared/shm.ts); CUDA shared memory
 * answers that it is not supported (400, as Triton's HTTP errors are), with
 * an empty status and a no-op unregister so cleanup calls of clients succeed.
 * Bodies arrive as Buffers (the REST bridge parses JSON itself).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { BrokerError } from '../../core/errors';
import { CUDA_NOT_SUPPORTED, type SharedMemoryRegistry } from '../shared/shm';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

type Named = FastifyRequest<{ Params: { name?: string } }>;

function jsonBody(req: FastifyRequest): Record<string, unknown> {
  const body = req.body;
  if (!Buffer.isBuffer(body) || body.length === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw invalid(`the body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('the body must be a JSON object');
  return v as Record<string, unknown>;
}

export function sharedMemoryRoutes(app: FastifyInstance, shm: SharedMemoryRegistry | undefined): void {
  const registry = (): SharedMemoryRegistry => {
    if (!shm) throw invalid('shared memory is not available on this server');
    return shm;
  };
  const SYS = '/v2/systemsharedmemory';
  app.get(`${SYS}/status`, async () => registry().status());
  app.get(`${SYS}/region/:name/status`, async (req: Named) => registry().status(req.params.name));
  app.post(`${SYS}/region/:name/register`, async (req: Named, reply) => {
    const body = jsonBody(req);
    if (typeof body.key !== 'string') throw invalid("the register request needs a 'key' (string)");
    await registry().register(req.params.name ?? '', body.key, body.offset, body.byte_size);
    return reply.code(200).send();
  });
  app.post(`${SYS}/unregister`, async (_req, reply) => {
    await registry().unregister();
    return reply.code(200).send();
  });
  app.post(`${SYS}/region/:name/unregister`, async (req: Named, reply) => {
    await registry().unregister(req.params.name);
    return reply.code(200).send();
  });

  const CUDA = '/v2/cudasharedmemory';
  app.get(`${CUDA}/status`, async () => []);
  app.get(`${CUDA}/region/:name/status`, async (req: Named) => {
    throw invalid(`CUDA shared memory region '${req.params.name}' is not registered: ${CUDA_NOT_SUPPORTED}`);
  });
  app.post(`${CUDA}/region/:name/register`, async () => {
    throw invalid(CUDA_NOT_SUPPORTED);
  });
  app.post(`${CUDA}/unregister`, async (_req, reply) => reply.code(200).send());
  app.post(`${CUDA}/region/:name/unregister`, async (req: Named) => {
    throw invalid(`CUDA shared memory region '${req.params.name}' is not registered: ${CUDA_NOT_SUPPORTED}`);
  });
}
