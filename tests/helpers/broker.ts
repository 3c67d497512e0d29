/**
 * Starts a whole broker for a test: its own redis-server, a models.yaml in a
 * temp folder, the chosen runtime, ports picked by the OS. One place owns
 * start and stop so each test reads as its scenario.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { stringify } from 'yaml';
import { resolveConfig, type BrokerConfig } from '../../app/config';
import { startBroker, type RunningBroker } from '../../app/server';
import { startRedis, type RedisHandle } from './redis';

export const ROOT = path.resolve(__dirname, '..', '..');
export const modelMain = (model: string) => path.join(ROOT, 'dist', 'examples', 'models', model, 'main.js');

/** models.yaml entry for the compiled simple example (batch 8), plus `extra` fields. */
export const simpleModel = (extra: Record<string, unknown> = {}) => ({ command: ['node', modelMain('simple')], batch_size: 8, ...extra });

/** models.yaml entry for the compiled sleepy example (batch 1, INPUT0 takes `aMs`), plus `extra` fields. */
export const sleepyModel = (aMs: number, extra: Record<string, unknown> = {}) => ({
  command: ['node', modelMain('sleepy')],
  batch_size: 1,
  env: { SLEEPY_A_MS: String(aMs), SLEEPY_B_MS: '0' },
  ...extra,
});

export interface TestBroker {
  running: RunningBroker;
  url: string;
  metricsUrl: string;
  /** tcp:// endpoint of the ZeroMQ client bridge. */
  zmqEndpoint: string;
  redis: RedisHandle;
  dir: string;
  config: BrokerConfig;
  stop(): Promise<void>;
}

export interface StartOptions {
  runtime?: 'process' | 'docker';
  /** models.yaml content (the `models:` map). */
  models: Record<string, unknown>;
  /** Raw text instead of `models` (e.g. to test a bad file). */
  modelsText?: string;
  /** Other files written next to models.yaml first (relative path -> content), e.g. label files. */
  files?: Record<string, string>;
  adminToken?: string;
  /** Reuse a running redis (e.g. a restart test). */
  redis?: RedisHandle;
  config?: Partial<BrokerConfig>;
  /** Receives every log line (JSON) of the broker. */
  logSink?: (line: string) => void;
}

let counter = 0;

export async function startTestBroker(opts: StartOptions): Promise<TestBroker> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-test-'));
  const redis = opts.redis ?? (await startRedis());
  const modelsPath = path.join(dir, 'models.yaml');
  for (const [rel, content] of Object.entries(opts.files ?? {})) {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), content);
  }
  await writeFile(modelsPath, opts.modelsText ?? stringify({ models: opts.models }));
  const id = `test-${process.pid}-${++counter}`;
  const config: BrokerConfig = {
    ...resolveConfig({}, {}),
    modelsPath,
    redisUrl: redis.url,
    redisPrefix: `${id}:`,
    runtime: opts.runtime ?? 'process',
    httpPort: 0,
    metricsPort: 0,
    zmqPort: 0,
    grpcPort: 0,
    brokerId: id,
    socketDir: path.join(dir, 'sock'),
    heartbeatMs: 250,
    shutdownGraceMs: 5000,
    adminToken: opts.adminToken,
    ...opts.config,
  };
  const sink = opts.logSink;
  const logger = sink
    ? pino({ level: 'info' }, { write: (line: string) => sink(line) })
    : pino({ level: process.env.TB_TEST_LOG ?? 'silent' });
  const running = await startBroker(config, logger);
  return {
    running,
    url: `http://127.0.0.1:${running.ports.http}`,
    metricsUrl: `http://127.0.0.1:${running.ports.metrics}/metrics`,
    zmqEndpoint: `tcp://127.0.0.1:${running.ports.zmq}`,
    redis,
    dir,
    config,
    async stop() {
      await running.close();
      if (!opts.redis) await redis.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves when `check` returns true, polling on the event loop; rejects after timeoutMs. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves when the model is ready, by its readiness endpoint. */
export function waitReady(b: TestBroker, model: string, timeoutMs = 30_000): Promise<void> {
  return waitFor(async () => (await fetch(`${b.url}/v2/models/${model}/ready`)).status === 200, timeoutMs, `model ${model} ready`);
}

export function simpleBody(a: number[][], b: number[][], extra: Record<string, unknown> = {}) {
  return {
    ...extra,
    inputs: [
      { name: 'INPUT0', datatype: 'INT32', shape: [a.length, a[0].length], data: a },
      { name: 'INPUT1', datatype: 'INT32', shape: [b.length, b[0].length], data: b.flat() },
    ],
  };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, any>; headers: Headers }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : {}, headers: res.headers };
}

/** GET a JSON document (tests assert on its shape). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function getJson(url: string): Promise<any> {
  return (await fetch(url)).json();
}

/** `n` ints 0..n-1 plus an offset, as one row. */
export const row = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => i + offset);
