/** Runs a Model as a model copy: connects to the broker and answers batches (see proto/README.md). */
import { create } from '@bufbuild/protobuf';
import pino, { type Logger } from 'pino';
import { Dealer, curveKeyPair } from 'zeromq';
import { checkTensorData, sliceRows, type Tensor, type TensorSpec } from '../../proto/tensor';
import {
  EndSequence_Reason, HeartbeatSchema, ItemStatusSchema, LinkDecodeError, PROTOCOL_VERSION,
  ReadySchema, ResponseSchema, ResultSchema, ShutdownSchema, TensorSpecSchema, decodeFrames, encodeFrames,
  tensorsFromFrames, toMeta, type Batch, type Envelope,
} from '../../proto/link';
import { SequenceStates } from './sequence-state';
import type { BatchContext, BatchItemInfo, EndSequenceReason, Model, PredictOutput } from './types';

export interface ServeOptions {
  /** Default env TB_ENDPOINT. */
  endpoint?: string;
  /** Default env TB_COPY_ID. */
  copyId?: string;
  /** Default env TB_MODEL, then metadata.name. */
  modelName?: string;
  /** Default env TB_HEARTBEAT_MS, then 1000. */
  heartbeatMs?: number;
  /** DEALER routing id. Default env TB_ROUTING_ID, then the copy id (brokers before per-copy secrets). */
  routingId?: string;
  /** Sent in READY. Default env TB_COPY_SECRET (removed from process.env once read, so child processes never see it). */
  secret?: string;
  /**
   * After READY, the copy exits (code 1) when it hears nothing from the broker for
   * this long: the broker is gone (killed, crashed) and nobody will stop this copy.
   * Default env TB_BROKER_TIMEOUT_MS, then max(30 s, 10 heartbeats); 0 = never.
   */
  brokerTimeoutMs?: number;
  /**
   * ZeroMQ CURVE on a tcp link: the broker's public key and this copy's key pair
   * (Z85). Default env TB_CURVE_SERVER_KEY, TB_CURVE_PUBLIC_KEY, TB_CURVE_SECRET_KEY
   * (the secret key is removed from process.env once read). Without a server key the
   * link is plain (ipc on one box).
   */
  curve?: { serverKey: string; publicKey?: string; secretKey?: string };
  logger?: Logger;
  /** Called when serving ends (default process.exit). */
  exit?: (code: number) => void;
}

const REASONS: Record<EndSequence_Reason, EndSequenceReason> = {
  [EndSequence_Reason.UNSPECIFIED]: 'unspecified',
  [EndSequence_Reason.END]: 'end',
  [EndSequence_Reason.CANCELLED]: 'cancelled',
  [EndSequence_Reason.IDLE]: 'idle',
};

function specToProto(s: TensorSpec) {
  return create(TensorSpecSchema, { name: s.name, datatype: s.datatype, shape: s.shape.map(BigInt), optional: s.optional ?? false, labels: s.labels ?? [] });
}

/** The DEALER's CURVE options, from `given` or the env; none when no server key is set. */
function curveOptions(given: ServeOptions['curve']): { curveServerKey?: string; curvePublicKey?: string; curveSecretKey?: string } {
  const serverKey = given?.serverKey ?? process.env.TB_CURVE_SERVER_KEY;
  const publicKey = given?.publicKey ?? process.env.TB_CURVE_PUBLIC_KEY;
  const secretKey = given?.secretKey ?? process.env.TB_CURVE_SECRET_KEY;
  delete process.env.TB_CURVE_SECRET_KEY;
  if (!serverKey) return {};
  // Without its own pair the copy makes one: the link is encrypted, but a broker that allows only known keys refuses it.
  const pair = publicKey && secretKey ? { publicKey, secretKey } : curveKeyPair();
  return { curveServerKey: serverKey, curvePublicKey: pair.publicKey, curveSecretKey: pair.secretKey };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Connects, loads the model, sends READY and serves until SHUTDOWN or SIGTERM/SIGINT. */
export async function serve(model: Model, opts: ServeOptions = {}): Promise<void> {
  const endpoint = opts.endpoint ?? process.env.TB_ENDPOINT;
  const copyId = opts.copyId ?? process.env.TB_COPY_ID ?? `copy-${process.pid}`;
  const modelName = opts.modelName ?? process.env.TB_MODEL ?? model.metadata.name ?? 'model';
  const heartbeatMs = opts.heartbeatMs ?? (Number(process.env.TB_HEARTBEAT_MS) || 1000);
  const routingId = opts.routingId ?? process.env.TB_ROUTING_ID ?? copyId;
  const secret = opts.secret ?? process.env.TB_COPY_SECRET ?? '';
  delete process.env.TB_COPY_SECRET;
  const envTimeout = Number(process.env.TB_BROKER_TIMEOUT_MS);
  const brokerTimeoutMs = opts.brokerTimeoutMs ?? (process.env.TB_BROKER_TIMEOUT_MS !== undefined && Number.isFinite(envTimeout) && envTimeout >= 0 ? envTimeout : Math.max(30_000, 10 * heartbeatMs));
  const log = opts.logger ?? pino({ base: { copyId, model: modelName } }, pino.destination({ dest: 2, sync: true }));
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  if (!endpoint) throw new Error('TB_ENDPOINT is not set');

  const curve = curveOptions(opts.curve);
  const sock = new Dealer({ routingId, linger: 200, ...curve });
  sock.connect(endpoint);
  log.info({ endpoint, curve: curve.curveServerKey !== undefined }, 'connected');

  // zeromq allows one pending send per socket: chain sends.
  let sendChain: Promise<void> = Promise.resolve();
  const send = (kind: Envelope['kind'], tensors: Tensor[] = []): Promise<void> => {
    const frames = encodeFrames(kind, tensors);
    sendChain = sendChain.then(() => sock.send(frames)).catch((e) => log.error({ err: e }, 'send failed'));
    return sendChain;
  };

  const inFlight = new Set<Promise<void>>();
  let stopping = false;
  let lastBrokerBeat = Date.now();
  let beat: NodeJS.Timeout | undefined = undefined; // set after READY
  let watchdog: NodeJS.Timeout | undefined = undefined; // set after READY

  const stop = async (code: number, why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why, inFlight: inFlight.size }, 'shutting down');
    clearInterval(beat);
    clearInterval(watchdog);
    await Promise.allSettled([...inFlight]);
    await sendChain;
    sock.close();
    exit(code);
  };

  const onSignal = (sig: string) => {
    if (stopping) return;
    void send({ case: 'shutdown', value: create(ShutdownSchema, { reason: 'sigterm' }) });
    void stop(0, sig);
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  const t0 = Date.now();
  try {
    await model.load?.();
  } catch (e) {
    log.error({ err: e }, 'load failed');
    sock.close();
    exit(1);
    return;
  }
  if (stopping) return;
  const md = model.metadata;
  if (md.decoupled ? !model.predictStream : !model.predictBatch) {
    log.error({ decoupled: !!md.decoupled }, md.decoupled ? 'a decoupled model needs predictStream' : 'the model needs predictBatch');
    sock.close();
    exit(1);
    return;
  }
  await send({
    case: 'ready',
    value: create(ReadySchema, {
      protocolVersion: PROTOCOL_VERSION, model: modelName, version: md.version ?? '',
      maxBatch: md.maxBatch, credits: md.credits ?? 1, maxSequences: md.maxSequences ?? 0, pid: process.pid, secret,
      decoupled: md.decoupled ?? false,
      inputs: md.inputs.map(specToProto), outputs: md.outputs.map(specToProto),
    }),
  });
  log.info({ loadMs: Date.now() - t0, maxBatch: md.maxBatch }, 'ready');

  beat = setInterval(() => {
    void send({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: BigInt(Date.now()) }) });
  }, heartbeatMs);

  // The broker heartbeats every heartbeatMs once it has our READY: long silence = it is gone.
  lastBrokerBeat = Date.now();
  if (brokerTimeoutMs > 0) {
    const every = Math.min(heartbeatMs, brokerTimeoutMs);
    let lastCheck = Date.now();
    watchdog = setInterval(() => {
      const now = Date.now();
      // A check that comes late (a model blocked the event loop) may have messages waiting: judge next time.
      const late = now - lastCheck > 2 * every;
      lastCheck = now;
      if (late || stopping || now - lastBrokerBeat <= brokerTimeoutMs) return;
      log.error({ silentMs: now - lastBrokerBeat, brokerTimeoutMs }, 'no message from the broker within TB_BROKER_TIMEOUT_MS: the broker is gone; exiting');
      void stop(1, 'broker gone');
    }, every);
  }

  const states = new SequenceStates<object>((seq) => model.createState?.(seq) ?? {});

  const parallel = md.parallel === true;
  let batchChain: Promise<unknown> = Promise.resolve();
  const runTracked = (p: Promise<void>) => {
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  };

  for (;;) {
    let frames: Buffer[];
    try {
      frames = await sock.receive();
    } catch (e) {
      if (stopping) return; // socket closed under us
      log.error({ err: e }, 'receive failed');
      await stop(1, 'receive failed');
      return;
    }
    if (stopping && sock.closed) return;
    lastBrokerBeat = Date.now();
    let env: Envelope;
    let rest: Buffer[];
    try {
      ({ envelope: env, frames: rest } = decodeFrames(frames));
    } catch (e) {
      log.warn({ err: errorText(e) }, 'dropped a bad message');
      continue;
    }
    const k = env.kind;
    switch (k.case) {
      case 'batch':
        if (stopping) {
          log.warn({ batchId: String(k.value.batchId) }, 'batch after shutdown refused');
          void send({ case: 'result', value: create(ResultSchema, { batchId: k.value.batchId, error: 'model copy is shutting down' }) });
          break;
        }
        {
          const batch = k.value;
          const run = () => runBatch(model, batch, rest, log, states, send);
          let reply: Promise<Reply>;
          if (parallel) reply = run();
          else {
            // One after the other in arrival order: a second credit only means the next batch waits here.
            reply = batchChain.then(run);
            batchChain = reply.catch(() => undefined);
          }
          runTracked(reply.then((r) => send(r.kind, r.tensors)));
        }
        break;
      case 'heartbeat':
        log.trace({ lastBrokerBeat }, 'broker heartbeat');
        break;
      case 'endSequence': {
        const { id, slot, reason } = k.value;
        // Dropped at once: a batch that follows on the link never sees the old state.
        const state = states.drop(id, slot);
        log.debug({ sequence: id, slot, reason: REASONS[reason], sequences: states.size }, 'sequence ended');
        runTracked(Promise.resolve()
          .then(() => model.endSequence?.(id, REASONS[reason] ?? 'unspecified', { slot, state }))
          .catch((e) => log.error({ err: e, sequence: id }, 'endSequence failed')));
        break;
      }
      case 'shutdown':
        void stop(0, `broker shutdown: ${k.value.reason}`);
        break;
      default:
        log.warn({ kind: k.case }, 'unexpected message');
    }
  }
}

interface Reply {
  kind: Envelope['kind'];
  tensors: Tensor[];
}

/** Runs one batch; always resolves to the RESULT to send. */
type Send = (kind: Envelope['kind'], tensors?: Tensor[]) => Promise<void>;

/** Outputs by name from what predictBatch / predictStream returned; undefined when it is neither form. */
function outputsOf(out: PredictOutput | undefined): Map<string, Tensor> | undefined {
  const produced = new Map<string, Tensor>();
  if (Array.isArray(out)) for (const t of out) produced.set(t.name, t);
  else if (out && typeof out === 'object') for (const [name, t] of Object.entries(out)) produced.set(name, { ...t, name });
  else return undefined;
  return produced;
}

/**
 * A decoupled model's batch: predictStream per item, concurrently; each yield
 * becomes a Response, and the RESULT (returned) is the final marker for all.
 */
async function runStreams(
  model: Model, batch: Batch, items: BatchItemInfo[], inputs: Record<string, Tensor>, wanted: string[], log: Logger, send: Send,
): Promise<{ itemErrors: string[]; outputNs: bigint }> {
  const whole = batch.whole;
  let outputNs = 0n;
  const itemErrors = await Promise.all(items.map(async (item, index): Promise<string> => {
    const own: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(inputs)) own[name] = whole || items.length === 1 ? t : sliceRows(t, item.offset, item.rows);
    try {
      for await (const out of model.predictStream!(own, { batchId: batch.batchId, item, whole, outputs: wanted, log })) {
        const t0 = process.hrtime.bigint();
        const produced = outputsOf(out);
        if (!produced) return 'predictStream yielded no outputs';
        const tensors: Tensor[] = [];
        for (const name of wanted) {
          const t = produced.get(name);
          if (!t) return `model did not produce output '${name}'`;
          if (!whole && t.shape[0] !== item.rows) return `output '${name}' has batch dimension ${t.shape[0]} but the request has ${item.rows} rows`;
          const bad = checkTensorData(t, 'output');
          if (bad) return bad;
          tensors.push(t);
        }
        outputNs += process.hrtime.bigint() - t0;
        await send({ case: 'response', value: create(ResponseSchema, { batchId: batch.batchId, item: index, tensors: tensors.map(toMeta) }) }, tensors);
      }
      return '';
    } catch (e) {
      log.warn({ err: errorText(e), request: item.requestId }, 'predictStream threw');
      return errorText(e) || 'predictStream failed';
    }
  }));
  return { itemErrors, outputNs };
}

async function runBatch(model: Model, batch: Batch, frames: Buffer[], rootLog: Logger, states: SequenceStates<object>, send: Send): Promise<Reply> {
  const batchId = batch.batchId;
  const fail = (error: string): Reply => ({ kind: { case: 'result', value: create(ResultSchema, { batchId, error }) }, tensors: [] });
  const log = rootLog.child({ batchId: String(batchId) });
  let offset = 0;
  const items = batch.items.map((it) => {
    const item = { requestId: it.requestId, rows: it.rows, offset, sequence: it.sequence && { ...it.sequence } };
    offset += it.rows;
    return item;
  });
  const totalRows = offset;
  // A non-batching model (registry batch_size 0): one item, whole shapes, no batch dimension to check.
  const whole = batch.whole;
  const itemErrors: string[] = items.map(() => '');

  let inputs: Record<string, Tensor>;
  const inputStart = process.hrtime.bigint();
  try {
    inputs = {};
    for (const t of tensorsFromFrames(batch.tensors, frames)) {
      const bad = checkTensorData(t);
      if (bad) return fail(bad);
      if (!whole && t.shape[0] !== totalRows) return fail(`input '${t.name}' has batch dimension ${t.shape[0]} but the batch has ${totalRows} rows`);
      inputs[t.name] = t;
    }
  } catch (e) {
    return fail(e instanceof LinkDecodeError ? e.message : `bad batch: ${errorText(e)}`);
  }

  const computeInputNs = process.hrtime.bigint() - inputStart;
  const wanted = batch.outputs.length > 0 ? [...batch.outputs] : model.metadata.outputs.map((o) => o.name);
  if (model.metadata.decoupled) {
    const start = process.hrtime.bigint();
    const { itemErrors: errors, outputNs } = await runStreams(model, batch, items, inputs, wanted, log, send);
    const computeNs = process.hrtime.bigint() - start - outputNs;
    return {
      kind: {
        case: 'result',
        value: create(ResultSchema, {
          batchId, computeNs, computeInputNs, computeOutputNs: outputNs,
          items: errors.map((error) => create(ItemStatusSchema, { error })),
        }),
      },
      tensors: [],
    };
  }
  try {
    for (const it of items) if (it.sequence?.start) states.reset(it.sequence);
  } catch (e) {
    return fail(`createState failed: ${errorText(e)}`);
  }
  const ctx: BatchContext = {
    batchId, items, totalRows, whole, outputs: wanted, log,
    state<S extends object>(index: number): S {
      const seq = items[index]?.sequence;
      if (!seq) throw new RangeError(`item ${index} of this batch is not in a sequence`);
      return states.get(seq) as S;
    },
    failItem(index, message) {
      if (!Number.isInteger(index) || index < 0 || index >= items.length) throw new RangeError(`no item ${index} in this batch`);
      itemErrors[index] = message || 'failed';
    },
  };

  const start = process.hrtime.bigint();
  let out: PredictOutput;
  try {
    out = await model.predictBatch!(inputs, ctx);
  } catch (e) {
    log.warn({ err: errorText(e) }, 'predictBatch threw');
    return fail(errorText(e) || 'predictBatch failed');
  }
  const computeNs = process.hrtime.bigint() - start;

  const outputStart = process.hrtime.bigint();
  const produced = outputsOf(out);
  if (!produced) return fail('predictBatch returned no outputs');

  const allFailed = itemErrors.every((e) => e !== '');
  const tensors: Tensor[] = [];
  if (!(allFailed && produced.size === 0)) {
    for (const name of wanted) {
      const t = produced.get(name);
      if (!t) return fail(`model did not produce output '${name}'`);
      if (!whole && t.shape[0] !== totalRows) return fail(`output '${name}' has batch dimension ${t.shape[0]} but the batch has ${totalRows} rows`);
      const bad = checkTensorData(t, 'output');
      if (bad) return fail(bad);
      tensors.push(t);
    }
  }
  return {
    kind: {
      case: 'result',
      value: create(ResultSchema, {
        batchId, computeNs, computeInputNs, computeOutputNs: process.hrtime.bigint() - outputStart,
        items: itemErrors.map((error) => create(ItemStatusSchema, { error })),
        tensors: tensors.map(toMeta),
      }),
    },
    tensors,
  };
}
