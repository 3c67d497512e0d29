/**
 * The ZeroMQ authentication handler (ZAP, RFC 27) of this process: libzmq asks
 * it, over `inproc://zeromq.zap.01`, whether a CURVE client may connect. There
 * can be one per ZeroMQ context, and every socket of zeromq.js shares the
 * default context, so several link servers in one process (tests, two brokers
 * in one process) share this one handler: each registers a ZAP domain with its
 * own allow-list of client public keys.
 */
import * as zmq from 'zeromq';

export const ZAP_ENDPOINT = 'inproc://zeromq.zap.01';

/** Decides on one CURVE client key (Z85) of a domain; true = let it connect. */
export type ZapCheck = (clientKey: string, address: string) => boolean;

const domains = new Map<string, ZapCheck>();
let handler: { sock: zmq.Reply; loop: Promise<void> } | undefined;
let binding: Promise<void> | undefined;

/** Registers `domain` (starts the handler on first use). Returns the function that removes it. */
export async function zapDomain(domain: string, check: ZapCheck): Promise<() => void> {
  if (domains.has(domain)) throw new Error(`ZAP domain ${domain} is already registered`);
  domains.set(domain, check);
  binding ??= start();
  await binding;
  return () => {
    domains.delete(domain);
    if (domains.size === 0) stop();
  };
}

let stopped: Promise<void> = Promise.resolve();

async function start(): Promise<void> {
  // A handler closed a moment ago may still hold the endpoint: wait for its loop, retry the bind briefly.
  await stopped;
  for (let attempt = 0; ; attempt++) {
    const sock = new zmq.Reply({ linger: 0 });
    try {
      await sock.bind(ZAP_ENDPOINT);
      handler = { sock, loop: serve(sock) };
      return;
    } catch (err) {
      sock.close();
      if (attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

function stop(): void {
  const h = handler;
  handler = undefined;
  binding = undefined;
  if (!h) return;
  h.sock.close();
  stopped = h.loop;
}

async function serve(sock: zmq.Reply): Promise<void> {
  for (;;) {
    let frames: Buffer[];
    try {
      frames = await sock.receive();
    } catch {
      return; // closed
    }
    const [version, requestId, domain, address, , mechanism, key] = frames;
    let ok = false;
    try {
      const check = domains.get(domain?.toString() ?? '');
      ok = !!check && mechanism?.toString() === 'CURVE' && key?.length === 32 && check(z85(key), address?.toString() ?? '');
    } catch {
      ok = false;
    }
    try {
      await sock.send([version ?? '1.0', requestId ?? '', ok ? '200' : '400', ok ? 'OK' : 'client key not allowed', '', '']);
    } catch {
      return;
    }
  }
}

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 encoding (ZeroMQ RFC 32) of a key, the form keys are written in. */
export function z85(data: Uint8Array): string {
  if (data.length % 4 !== 0) throw new Error('z85: length must be a multiple of 4');
  let out = '';
  for (let i = 0; i < data.length; i += 4) {
    let v = ((data[i] << 24) >>> 0) + (data[i + 1] << 16) + (data[i + 2] << 8) + data[i + 3];
    const chunk: string[] = [];
    for (let j = 0; j < 5; j++) {
      chunk.unshift(Z85[v % 85]);
      v = Math.floor(v / 85);
    }
    out += chunk.join('');
  }
  return out;
}
