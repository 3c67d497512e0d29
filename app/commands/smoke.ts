/**
 * The smoke test of a model image: run it as the broker would (no network, the
 * link socket bind-mounted), wait for READY, then SHUTDOWN it. Proves the image
 * starts, finds its SDK and native parts, and speaks the link protocol.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { Router } from 'zeromq';
import { ShutdownSchema, decodeFrames, encodeFrames, type Ready } from '../../proto/link';

export async function smokeTest(image: string, model: string, timeoutMs: number, log: (msg: string) => void): Promise<Ready> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-smoke-'));
  fs.chmodSync(dir, 0o777); // the image runs as uid 1000
  const sock = new Router();
  const id = randomBytes(4).toString('hex');
  const copyId = `smoke-${id}`;
  const container = `tb-smoke-${id}`;
  let exited: Promise<number | null> | undefined;
  try {
    await sock.bind(`ipc://${path.join(dir, 'link.ipc')}`);
    fs.chmodSync(path.join(dir, 'link.ipc'), 0o666);
    log(`smoke test: running ${image} (no network) until it sends READY`);
    const child = spawn('docker', ['run', '--rm', '--name', container, '--network', 'none', '-v', `${dir}:/run/tb`,
      '-e', 'TB_ENDPOINT=ipc:///run/tb/link.ipc', '-e', `TB_COPY_ID=${copyId}`, '-e', `TB_MODEL=${model}`, image],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (b: Buffer) => (output = (output + b.toString()).slice(-4000));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    exited = new Promise((resolve) => child.once('close', (code) => resolve(code)));

    const ready = await new Promise<Ready>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no READY from ${image} within ${timeoutMs} ms; its output:\n${output}`)), timeoutMs);
      void exited!.then((code) => reject(new Error(`${image} exited with ${code} before READY; its output:\n${output}`)));
      void (async () => {
        try {
          for await (const [, ...frames] of sock) {
            const m = decodeFrames(frames);
            if (m.envelope.kind.case === 'ready') {
              clearTimeout(timer);
              resolve(m.envelope.kind.value);
              return;
            }
          }
        } catch (e) {
          reject(e as Error);
        }
      })();
    });
    const io = (specs: { name: string; datatype: string; shape: bigint[] }[]) => specs.map((s) => `${s.name} ${s.datatype} [${s.shape.join(', ')}]`).join(', ');
    log(`smoke test: READY from ${image}: model ${ready.model}, max batch ${ready.maxBatch}, inputs ${io(ready.inputs)}; outputs ${io(ready.outputs)}`);
    await sock.send([copyId, ...encodeFrames({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 2000, reason: 'smoke test done' }) })]);
    const code = await Promise.race([exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 10_000).unref())]);
    if (code === 'late') log(`smoke test: ${image} did not exit 10 s after SHUTDOWN; removing it`);
    else if (code !== 0) log(`smoke test: ${image} exited with ${code} after SHUTDOWN (expected 0)`);
    return ready;
  } finally {
    // Removes the container if it is still there (timeout, late exit); harmless otherwise.
    await new Promise((r) => spawn('docker', ['rm', '-f', container], { stdio: 'ignore' }).once('close', r));
    sock.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
