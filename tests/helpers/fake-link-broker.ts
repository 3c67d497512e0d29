/**
 * The broker's side of the link protocol for SDK tests: a ROUTER that decodes what a
 * model copy sends and lets a test wait for the next message of a kind; and a
 * spawned model copy connected to it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { Router } from 'zeromq';
import { BatchSchema, decodeFrames, encodeFrames, toMeta, type Envelope, type Result } from '../../proto/link';
import type { Tensor } from '../../proto/tensor';

export interface LinkMsg { envelope: Envelope; frames: Buffer[]; at: number }
export type LinkKind = NonNullable<Envelope['kind']['case']>;
export type LinkValue<K extends LinkKind> = Extract<Envelope['kind'], { case: K }>['value'];

export interface SequenceCtl { id: string; slot?: number; start?: boolean; end?: boolean }

export class FakeLinkBroker {
  readonly sock = new Router();
  readonly heartbeats: number[] = [];
  private queue: LinkMsg[] = [];
  private waiters: Array<() => void> = [];
  copyId?: Buffer;

  constructor(readonly waitMs = 10_000) {}

  async bind(endpoint: string): Promise<void> {
    await this.sock.bind(endpoint);
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for await (const [id, ...frames] of this.sock) {
        this.copyId = id;
        const m = { ...decodeFrames(frames), at: Date.now() };
        if (m.envelope.kind.case === 'heartbeat') this.heartbeats.push(m.at);
        else this.queue.push(m);
        this.waiters.splice(0).forEach((w) => w());
      }
    } catch {
      // socket closed
    }
  }

  private wake(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiters.push(() => { clearTimeout(t); resolve(); });
    });
  }

  /** Next message (heartbeats are only counted); it must be of `kind`. */
  async next<K extends LinkKind>(kind: K, ms = this.waitMs): Promise<LinkMsg & { value: LinkValue<K> }> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.queue.shift();
      if (m) {
        if (m.envelope.kind.case !== kind) throw new Error(`expected ${kind}, got ${m.envelope.kind.case}`);
        return { ...m, value: m.envelope.kind.value as LinkValue<K> };
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${kind} within ${ms} ms`);
      await this.wake(left);
    }
  }

  /** Resolves once `n` heartbeats arrived in total. */
  async heartbeatsSeen(n: number, ms = this.waitMs): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.heartbeats.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`only ${this.heartbeats.length} of ${n} heartbeats within ${ms} ms`);
      await this.wake(left);
    }
  }

  async send(kind: Envelope['kind'], tensors: Tensor[] = []): Promise<void> {
    if (!this.copyId) throw new Error('no copy connected');
    await this.sock.send([this.copyId, ...encodeFrames(kind, tensors)]);
  }

  /** Sends a BATCH; items are [request id, rows, sequence control?]. */
  async sendBatch(batchId: bigint, items: Array<[string, number, SequenceCtl?]>, tensors: Tensor[], outputs: string[] = []): Promise<void> {
    await this.send({
      case: 'batch',
      value: create(BatchSchema, {
        batchId, model: 'm', outputs, tensors: tensors.map(toMeta),
        items: items.map(([requestId, rows, seq]) => ({ requestId, rows, sequence: seq && { slot: 0, start: false, end: false, ...seq } })),
      }),
    }, tensors);
  }

  /** Sends a BATCH and waits for its RESULT. */
  async batch(batchId: bigint, items: Array<[string, number, SequenceCtl?]>, tensors: Tensor[], outputs: string[] = []): Promise<LinkMsg & { value: Result }> {
    await this.sendBatch(batchId, items, tensors, outputs);
    const r = await this.next('result');
    if (r.value.batchId !== batchId) throw new Error(`RESULT for batch ${r.value.batchId}, expected ${batchId}`);
    return r;
  }

  close(): void {
    this.sock.close();
  }
}

export interface StartedCopy { broker: FakeLinkBroker; child: ChildProcess; stderr(): string }

/**
 * Binds a fake broker on an ipc socket in `dir` and spawns `argv` as the copy `name`
 * (heartbeats every 200 ms); `env` adds to the process env. The copy's stderr is captured.
 */
export async function startCopy(dir: string, argv: string[], name: string, env: Record<string, string> = {}): Promise<StartedCopy> {
  const endpoint = `ipc://${path.join(dir, `${name}.ipc`)}`;
  const broker = new FakeLinkBroker();
  await broker.bind(endpoint);
  let stderr = '';
  const child = spawn(argv[0], argv.slice(1), {
    env: { ...process.env, TB_ENDPOINT: endpoint, TB_COPY_ID: name, TB_HEARTBEAT_MS: '200', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr?.on('data', (b: Buffer) => { stderr += b.toString(); });
  return { broker, child, stderr: () => stderr };
}

/** The copy's exit code; rejects if it has not exited within `ms`. */
export function exitOf(child: ChildProcess, ms = 10_000): Promise<number | null> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    const t = setTimeout(() => reject(new Error('model did not exit')), ms);
    child.once('exit', (code) => { clearTimeout(t); resolve(code); });
  });
}
