/**
 * Baseline without the broker: the benchmark binds its own ROUTER (ipc in a
 * temp dir), spawns one model copy against it, and sends it BATCH messages of
 * one row over the link protocol (proto/README.md), measuring round trips.
 *
 * The copy announces `credits` in READY (the simple model: 1). Like the broker,
 * the bench never has more than `credits` batches outstanding at the copy;
 * further requests wait in a FIFO on the bench side, and their latency includes
 * that wait. So concurrency c means c callers, each with one single-row request
 * outstanding, served one batch at a time without batching.
 */
import { create } from '@bufbuild/protobuf';
import { once } from 'node:events';
import path from 'node:path';
import { Router } from 'zeromq';
import type { Tensor } from '../proto/tensor';
import { BatchItemSchema, BatchSchema, ShutdownSchema, decodeFrames, encodeFrames, toMeta, type Envelope } from '../proto/link';
import { spawnChild, type ChildHandle } from './procs';
import { closedLoop, type LoopPoint } from './loop';

export type DirectPoint = LoopPoint;

interface Waiter {
  resolve(tensors: Buffer[]): void;
  reject(e: Error): void;
}

export interface DirectOptions {
  /** Folder for the ipc socket. */
  dir: string;
  /** The copy's main.js. */
  main: string;
  model: string;
  readyTimeoutMs?: number;
}

export class DirectCopy {
  credits = 1;
  maxBatch = 0;
  private readonly router = new Router({ mandatory: true, linger: 0, sendHighWaterMark: 10_000 });
  private readonly copyId = `bench-direct-${process.pid}`;
  private child?: ChildHandle;
  private sendChain: Promise<void> = Promise.resolve();
  private nextBatchId = 1n;
  private readonly outstanding = new Map<bigint, Waiter>();
  private readonly backlog: { tensors: Tensor[]; waiter: Waiter }[] = [];
  private onReady?: (credits: number, maxBatch: number) => void;
  private closed = false;

  private constructor(private readonly opts: DirectOptions) {}

  static async start(opts: DirectOptions): Promise<DirectCopy> {
    const d = new DirectCopy(opts);
    try {
      await d.init();
    } catch (e) {
      await d.close();
      throw e;
    }
    return d;
  }

  private async init(): Promise<void> {
    const endpoint = `ipc://${path.join(this.opts.dir, 'direct.ipc')}`;
    await this.router.bind(endpoint);
    const ready = new Promise<void>((resolve) => {
      this.onReady = (credits, maxBatch) => {
        this.credits = credits > 0 ? credits : 1;
        this.maxBatch = maxBatch;
        resolve();
      };
    });
    void this.receiveLoop();
    this.child = spawnChild(process.execPath, [this.opts.main], {
      ...process.env,
      TB_ENDPOINT: endpoint,
      TB_COPY_ID: this.copyId,
      TB_MODEL: this.opts.model,
      TB_HEARTBEAT_MS: '1000',
      // The bench is a stand-in broker that sends no heartbeats: the copy must not exit for want of them.
      TB_BROKER_TIMEOUT_MS: '0',
    });
    const timeoutMs = this.opts.readyTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const failed = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`direct copy sent no READY within ${timeoutMs} ms: ${this.child?.output()}`)), timeoutMs);
      void once(this.child!.child, 'exit').then(() => reject(new Error(`direct copy exited before READY: ${this.child?.output()}`)));
    });
    failed.catch(() => undefined); // it may still fire (the copy exiting at close) after READY won the race
    try {
      await Promise.race([ready, failed]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async receiveLoop(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.router.receive();
      } catch {
        return; // closed
      }
      let env: Envelope;
      let rest: Buffer[];
      try {
        ({ envelope: env, frames: rest } = decodeFrames(frames.slice(1)));
      } catch {
        continue;
      }
      const k = env.kind;
      if (k.case === 'ready') this.onReady?.(k.value.credits, k.value.maxBatch);
      else if (k.case === 'result') {
        const w = this.outstanding.get(k.value.batchId);
        if (!w) continue;
        this.outstanding.delete(k.value.batchId);
        const itemError = k.value.items.find((it) => it.error !== '')?.error;
        if (k.value.error || itemError) w.reject(new Error(k.value.error || itemError));
        else w.resolve(rest);
        this.pump();
      }
    }
  }

  private send(frames: Buffer[]): void {
    this.sendChain = this.sendChain.then(() => this.router.send([this.copyId, ...frames])).catch((e: Error) => {
      for (const w of this.outstanding.values()) w.reject(e);
      this.outstanding.clear();
    });
  }

  /** Moves queued requests to the copy while it has credits. */
  private pump(): void {
    while (this.outstanding.size < this.credits && this.backlog.length > 0) {
      const { tensors, waiter } = this.backlog.shift()!;
      const batchId = this.nextBatchId++;
      const rows = tensors[0].shape[0];
      this.outstanding.set(batchId, waiter);
      const batch = create(BatchSchema, {
        batchId,
        model: this.opts.model,
        items: [create(BatchItemSchema, { requestId: String(batchId), rows })],
        tensors: tensors.map(toMeta),
        outputs: [],
      });
      this.send(encodeFrames({ case: 'batch', value: batch }, tensors));
    }
  }

  /** One request of the given tensors (their first dimension is the row count); resolves to the output frames. */
  infer(tensors: Tensor[]): Promise<Buffer[]> {
    if (this.closed) return Promise.reject(new Error('closed'));
    return new Promise((resolve, reject) => {
      this.backlog.push({ tensors, waiter: { resolve, reject } });
      this.pump();
    });
  }

  /** `connections` closed-loop callers for `seconds`; counts requests completed inside the window. */
  runPoint(tensors: Tensor[], connections: number, seconds: number): Promise<DirectPoint> {
    return closedLoop(() => this.infer(tensors), connections, seconds);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.child && !this.child.exited()) {
      this.send(encodeFrames({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 2000, reason: 'bench done' }) }));
      await Promise.race([this.sendChain, new Promise((r) => setTimeout(r, 500))]);
      await Promise.race([once(this.child.child, 'exit'), new Promise((r) => setTimeout(r, 2000))]);
      await this.child.stop(2000);
    }
    for (const w of this.outstanding.values()) w.reject(new Error('closed'));
    this.outstanding.clear();
    this.router.close();
  }
}

