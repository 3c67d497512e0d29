/**
 * The broker's side of the link for SDK tests: a ROUTER with a queue of
 * decoded messages to wait on (heartbeats skipped), and a spawned model copy.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { Router } from 'zeromq';
import { decodeFrames, encodeFrames, type Envelope } from '../../proto/link';
import type { Tensor } from '../../core/tensor';

export interface LinkMsg { envelope: Envelope; frames: Buffer[] }
type Kind = NonNullable<Envelope['kind']['case']>;
type ValueOf<K extends Kind> = Extract<Envelope['kind'], { case: K }>['value'];

export class FakeLinkBroker {
  readonly sock = new Router();
  private queue: LinkMsg[] = [];
  private waiters: Array<() => void> = [];
  copyId?: Buffer;

  async bind(endpoint: string): Promise<void> {
    await this.sock.bind(endpoint);
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for await (const [id, ...frames] of this.sock) {
        this.copyId = id;
        this.queue.push(decodeFrames(frames));
        this.waiters.splice(0).forEach((w) => w());
      }
    } catch {
      // socket closed
    }
  }

  /** Next message of `kind`, skipping heartbeats. */
  async next<K extends Kind>(kind: K, ms = 10_000): Promise<LinkMsg & { value: ValueOf<K> }> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.queue.findIndex((m) => m.envelope.kind.case !== 'heartbeat');
      if (i >= 0) {
        const [m] = this.queue.splice(i, 1);
        if (m.envelope.kind.case !== kind) throw new Error(`expected ${kind}, got ${m.envelope.kind.case}`);
        return { ...m, value: m.envelope.kind.value as ValueOf<K> } as LinkMsg & { value: ValueOf<K> };
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${kind} within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  async send(kind: Envelope['kind'], tensors: Tensor[] = []): Promise<void> {
    if (!this.copyId) throw new Error('no copy connected');
    await this.sock.send([this.copyId, ...encodeFrames(kind, tensors)]);
  }
}

/** Binds a fake broker on an ipc socket in `dir` and spawns `main` (compiled JS) as the copy `name`. */
export async function startCopy(dir: string, main: string, name: string, env: Record<string, string> = {}): Promise<{ broker: FakeLinkBroker; child: ChildProcess }> {
  const endpoint = `ipc://${path.join(dir, `${name}.ipc`)}`;
  const broker = new FakeLinkBroker();
  await broker.bind(endpoint);
  const child = spawn(process.execPath, [main], {
    env: { ...process.env, TB_ENDPOINT: endpoint, TB_COPY_ID: name, TB_HEARTBEAT_MS: '200', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return { broker, child };
}
