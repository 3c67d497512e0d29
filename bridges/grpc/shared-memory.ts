/**
 * Triton's shared-memory rpcs on gRPC, over the registry both bridges share
 * (bridges/shared/shm.ts). CUDA shared memory: an empty status, a no-op
 * unregister of everything (clients' cleanup calls), and UNIMPLEMENTED for a
 * registration — what Triton built without GPU support answers.
 */
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { BrokerError } from '../../core/errors';
import { CUDA_NOT_SUPPORTED, type SharedMemoryRegistry } from '../shared/shm';
import {
  CudaSharedMemoryStatusResponseSchema,
  CudaSharedMemoryUnregisterResponseSchema,
  SystemSharedMemoryRegisterResponseSchema,
  SystemSharedMemoryStatusResponseSchema,
  SystemSharedMemoryUnregisterResponseSchema,
  type CudaSharedMemoryRegisterRequest,
  type CudaSharedMemoryRegisterResponse,
  type CudaSharedMemoryStatusRequest,
  type CudaSharedMemoryStatusResponse,
  type CudaSharedMemoryUnregisterRequest,
  type CudaSharedMemoryUnregisterResponse,
  type SystemSharedMemoryRegisterRequest,
  type SystemSharedMemoryRegisterResponse,
  type SystemSharedMemoryStatusRequest,
  type SystemSharedMemoryStatusResponse,
  type SystemSharedMemoryUnregisterRequest,
  type SystemSharedMemoryUnregisterResponse,
} from '../../proto/gen/grpc_service_pb';

export interface SharedMemoryHandlers {
  SystemSharedMemoryStatus: grpc.handleUnaryCall<SystemSharedMemoryStatusRequest, SystemSharedMemoryStatusResponse>;
  SystemSharedMemoryRegister: grpc.handleUnaryCall<SystemSharedMemoryRegisterRequest, SystemSharedMemoryRegisterResponse>;
  SystemSharedMemoryUnregister: grpc.handleUnaryCall<SystemSharedMemoryUnregisterRequest, SystemSharedMemoryUnregisterResponse>;
  CudaSharedMemoryStatus: grpc.handleUnaryCall<CudaSharedMemoryStatusRequest, CudaSharedMemoryStatusResponse>;
  CudaSharedMemoryRegister: grpc.handleUnaryCall<CudaSharedMemoryRegisterRequest, CudaSharedMemoryRegisterResponse>;
  CudaSharedMemoryUnregister: grpc.handleUnaryCall<CudaSharedMemoryUnregisterRequest, CudaSharedMemoryUnregisterResponse>;
}

type Unary = <Req, Res>(rpc: string, fn: (req: Req) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

/** `unary` is the handlers' own wrapper: errors are mapped to gRPC status there, once. */
export function sharedMemoryHandlers(shm: SharedMemoryRegistry | undefined, unary: Unary): SharedMemoryHandlers {
  const registry = (): SharedMemoryRegistry => {
    if (!shm) throw new BrokerError('INVALID_ARGUMENT', 'shared memory is not available on this server');
    return shm;
  };
  return {
    SystemSharedMemoryStatus: unary('SystemSharedMemoryStatus', (req: SystemSharedMemoryStatusRequest) =>
      create(SystemSharedMemoryStatusResponseSchema, {
        regions: Object.fromEntries(registry().status(req.name || undefined).map((r) => [r.name, { name: r.name, key: r.key, offset: BigInt(r.offset), byteSize: BigInt(r.byte_size) }])),
      })),
    SystemSharedMemoryRegister: unary('SystemSharedMemoryRegister', async (req: SystemSharedMemoryRegisterRequest) => {
      await registry().register(req.name, req.key, req.offset, req.byteSize);
      return create(SystemSharedMemoryRegisterResponseSchema, {});
    }),
    SystemSharedMemoryUnregister: unary('SystemSharedMemoryUnregister', async (req: SystemSharedMemoryUnregisterRequest) => {
      await registry().unregister(req.name || undefined);
      return create(SystemSharedMemoryUnregisterResponseSchema, {});
    }),
    CudaSharedMemoryStatus: unary('CudaSharedMemoryStatus', (req: CudaSharedMemoryStatusRequest) => {
      if (req.name) throw new BrokerError('INVALID_ARGUMENT', `CUDA shared memory region '${req.name}' is not registered: ${CUDA_NOT_SUPPORTED}`);
      return create(CudaSharedMemoryStatusResponseSchema, {});
    }),
    CudaSharedMemoryRegister: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: CUDA_NOT_SUPPORTED }),
    CudaSharedMemoryUnregister: unary('CudaSharedMemoryUnregister', (req: CudaSharedMemoryUnregisterRequest) => {
      if (req.name) throw new BrokerError('INVALID_ARGUMENT', `CUDA shared memory region '${req.name}' is not registered: ${CUDA_NOT_SUPPORTED}`);
      return create(CudaSharedMemoryUnregisterResponseSchema, {});
    }),
  };
}
