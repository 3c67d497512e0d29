/**
 * An inference as the bridges run it with Triton's output/input extensions:
 * inputs read from shared memory regions, broker.infer, classification of the
 * outputs that asked for it, outputs written into regions. One function, so
 * REST and gRPC (unary and streamed) behave alike.
 */
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { InferRequest, InferResult } from '../../core/types';
import { inferClassified } from './classification';
import type { SharedMemoryRegistry, ShmRefs } from './shm';

export interface InferExtras extends ShmRefs {
  /** Outputs asked for as top-k classes. */
  classification?: Map<string, number>;
}

export async function inferExtended(
  broker: Pick<BrokerApi, 'infer' | 'describe'>,
  shm: SharedMemoryRegistry | undefined,
  req: InferRequest,
  extras: InferExtras,
): Promise<InferResult> {
  const { shmInputs, shmOutputs } = extras;
  if (!shmInputs && !shmOutputs) return inferClassified(broker, req, extras.classification);
  if (!shm) throw new BrokerError('INVALID_ARGUMENT', 'shared memory is not available on this bridge');
  shm.check(extras); // unknown regions and windows fail before the request is queued
  // No await before broker.infer: the requests of a sequence reach it in arrival order.
  const inputs = shmInputs ? shm.fillInputs(req.inputs, shmInputs) : req.inputs;
  const result = await inferClassified(broker, { ...req, inputs }, extras.classification);
  return shmOutputs ? shm.writeOutputs(result, shmOutputs) : result;
}
