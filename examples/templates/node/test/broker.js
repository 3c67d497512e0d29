// @ts-check
/**
 * Starts a Tensor Broker serving this project's models.yaml with local
 * processes, for tests. The broker command is $TENSORBROKER (default
 * `tensorbroker`, e.g. TENSORBROKER="node /path/to/tensorbroker/dist/app/cli.js");
 * it finds Redis as it always does ($TB_REDIS_URL, default redis://127.0.0.1:6379).
 */
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const PROJECT = path.resolve(__dirname, '..');

/** @returns {Promise<{ url: string, zmq: string, stop: () => Promise<void> }>} */
async function startBroker(timeoutMs = 60_000) {
  const [cmd, ...pre] = (process.env.TENSORBROKER || 'tensorbroker').split(' ').filter(Boolean);
  const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-test-'));
  const child = spawn(cmd, [...pre, 'serve', '--models', path.join(PROJECT, 'models.yaml'), '--runtime', 'process',
    '--http-port', '0', '--grpc-port', '0', '--metrics-port', '0', '--zmq-port', '0',
    '--socket-dir', socketDir, '--broker-id', `test-${process.pid}`], {
    env: { ...process.env, TB_REDIS_PREFIX: `test-${process.pid}:` },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(undefined);
    else { child.once('exit', resolve); child.kill('SIGTERM'); }
  }).then(() => fs.rmSync(socketDir, { recursive: true, force: true }));
  try {
    const serving = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the broker did not start in time')), timeoutMs);
      child.once('exit', (code) => reject(new Error(`the broker exited with ${code}`)));
      let buf = '';
      child.stdout.on('data', (d) => {
        buf += d;
        for (let nl; (nl = buf.indexOf('\n')) >= 0; buf = buf.slice(nl + 1)) {
          let line;
          try { line = JSON.parse(buf.slice(0, nl)); } catch { continue; }
          if (line.msg === 'tensorbroker serving') { clearTimeout(timer); resolve(line); }
        }
      });
    });
    return { url: `http://127.0.0.1:${serving.http}`, zmq: `tcp://127.0.0.1:${serving.zmq}`, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Waits until the broker says the model is ready (a copy sent READY). */
async function waitReady(url, model, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${url}/v2/models/${model}/ready`).catch(() => undefined);
    if (res?.status === 200) return;
    if (Date.now() > deadline) throw new Error(`model ${model} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

module.exports = { startBroker, waitReady };
