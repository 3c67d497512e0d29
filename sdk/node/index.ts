/** Tensor Broker model SDK for Node: implement `Model`, call `serve(model)`. */
export { serve, type ServeOptions } from './serve';
export { SequenceStates } from './sequence-state';
export type {
  Model, ModelMetadata, BatchContext, StreamContext, BatchItemInfo, SequenceInfo, EndSequenceReason, PredictOutput,
  Tensor, TensorSpec, DataType,
} from './types';
export {
  asNdarray, typedArray, tensorFrom, tensorFromNdarray, encodeBytes, decodeBytes, bytesElements, bytesTensor,
  type NumericArray,
} from './tensor-views';
export { DATATYPES, elementCount, elementSize, sliceRows } from '../../proto/tensor';
export { ZmqClient, ZmqClientError, type ZmqClientOptions, type ZmqInferOptions, type ZmqInferResult, type ZmqJobOptions, type JobInfo, type ParameterValue } from './zmq-client';
