/**
 * `npm run bench:json64`: what exact 64-bit JSON costs the REST bridge, in one
 * process and one run. Each body is decoded the way the JSON request path
 * does it (text -> value -> tensors, bridges/rest/json-body.ts readJson +
 * infer-body.ts parseInferBody), and each answer encoded as it is written
 * (stringifyJson), next to baselines measured in the same rounds:
 *
 *   plain     JSON.parse + parseInferBody (what the path was before exact
 *             64-bit integers), JSON.stringify for answers;
 *   exact     the broker's path: JSON.parse first, lossless-json only when a
 *             codec meets an integer beyond 2^53 (InexactInteger);
 *   lossless  lossless-json for every body (the obvious alternative).
 *
 * Timing is CPU time of this process (process.cpuUsage, user + system) per
 * operation, so other work on a shared machine does not count. The variants
 * run interleaved in short rounds (A B C, A B C, ...) and each figure is the
 * median over the rounds; ratios are against `plain` from the same rounds.
 * Writes bench/results/json64.md and .json (BENCH_WRITE=0: print only).
 */
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as losslessParse } from 'lossless-json';
import { parseJson, readJson, stringifyJson } from '../bridges/rest/json-body';
import { parseInferBody } from '../bridges/rest/infer-body';
import { tensorToJson } from '../bridges/rest/json-tensors';
import type { Tensor } from '../proto/tensor';
import { runMain } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const ROUNDS = Number(process.env.BENCH_JSON_ROUNDS ?? 40);
/** CPU milliseconds each variant runs per round (rounded up to whole batches). */
const ROUND_MS = Number(process.env.BENCH_JSON_ROUND_MS ?? 25);

const log = (m: string) => process.stderr.write(`[json64] ${m}\n`);

type Op = () => unknown;

interface Body {
  name: string;
  text: string;
  /** Holds integers beyond 2^53 (plain JSON.parse would round them: it is refused, not decoded). */
  big: boolean;
}

const BIG = 4611686018427387907n; // 2^62 + 3, the example

function inferBody(inputs: { name: string; datatype: string; shape: number[]; data: string }[], params = ''): string {
  const parts = inputs.map((i) => `{"name":"${i.name}","datatype":"${i.datatype}","shape":[${i.shape.join(',')}],"data":${i.data}}`);
  return `{"id":"bench-1",${params}"inputs":[${parts.join(',')}]}`;
}

const ints = (n: number, f: (i: number) => string) => `[${Array.from({ length: n }, (_, i) => f(i)).join(',')}]`;

const BODIES: Body[] = [
  // Triton's `simple`: INT32 [1,16] twice (the README's REST JSON benchmark body).
  { name: 'simple INT32 [1,16] x2', big: false, text: inferBody(['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'INT32', shape: [1, 16], data: ints(16, (i) => String(i)) }))) },
  // An image-sized FP32 tensor as JSON numbers.
  { name: 'FP32 [1,3,64,64]', big: false, text: inferBody([{ name: 'IMAGE', datatype: 'FP32', shape: [1, 3, 64, 64], data: ints(3 * 64 * 64, (i) => String(((i * 7919) % 1000) / 997)) }]) },
  // INT64 ids that fit a double (timestamps, row ids), and a sequence id.
  { name: 'INT64 [1,256], small values', big: false, text: inferBody([{ name: 'IDS', datatype: 'INT64', shape: [1, 256], data: ints(256, (i) => String(1_700_000_000_000 + i)) }], '"parameters":{"sequence_id":123456789},') },
  // The same tensor with every value beyond 2^53.
  { name: 'INT64 [1,256], values > 2^53', big: true, text: inferBody([{ name: 'IDS', datatype: 'INT64', shape: [1, 256], data: ints(256, (i) => String(BIG + BigInt(i))) }], '"parameters":{"sequence_id":123456789},') },
  // One big integer in a small body: a sequence id beyond 2^53.
  { name: 'simple + sequence_id > 2^53', big: true, text: inferBody(['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'INT32', shape: [1, 16], data: ints(16, (i) => String(i)) })), `"parameters":{"sequence_id":${BIG}},`) },
];

function int64Answer(name: string, values: bigint[]): unknown {
  const t: Tensor = { name: 'OUT', datatype: 'INT64', shape: [1, values.length], data: Buffer.from(BigInt64Array.from(values).buffer) };
  return { model_name: name, model_version: '1', id: 'bench-1', outputs: [{ name: 'OUT', datatype: 'INT64', shape: t.shape, data: tensorToJson(t) }] };
}

/** Answers: tensorToJson made the values numbers when a double holds them, else bigints. */
const ANSWERS = [
  { name: 'INT32 [1,16] x2 answer', big: false, value: { model_name: 'simple', model_version: '1', outputs: ['OUTPUT0', 'OUTPUT1'].map((n) => ({ name: n, datatype: 'INT32', shape: [1, 16], data: Array.from({ length: 16 }, (_, i) => i * 2) })) } },
  { name: 'INT64 [1,256] answer, small values', big: false, value: int64Answer('ids', Array.from({ length: 256 }, (_, i) => 1_700_000_000_000n + BigInt(i))) },
  { name: 'INT64 [1,256] answer, values > 2^53', big: true, value: int64Answer('ids', Array.from({ length: 256 }, (_, i) => BIG + BigInt(i))) },
];

const decodeRead = (h: unknown) => parseInferBody(h, undefined, 'fallback');

/** CPU µs (user + system) of this process. */
function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** How many calls of `op` take about ROUND_MS of CPU (measured once, after a warm-up). */
function calibrate(op: Op): number {
  for (let i = 0; i < 200; i++) op();
  let n = 1;
  for (;;) {
    const t0 = cpuUs();
    for (let i = 0; i < n; i++) op();
    const us = cpuUs() - t0;
    if (us >= 5_000) return Math.max(1, Math.ceil((n * ROUND_MS * 1000) / us));
    n *= 2;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** ns of CPU per call of each variant: interleaved rounds, median per variant. */
function measure(variants: Record<string, Op>): Record<string, number> {
  const names = Object.keys(variants);
  const batch = Object.fromEntries(names.map((k) => [k, calibrate(variants[k])]));
  const per: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const k of r % 2 ? [...names].reverse() : names) {
      const op = variants[k];
      const n = batch[k];
      const t0 = cpuUs();
      for (let i = 0; i < n; i++) op();
      per[k].push(((cpuUs() - t0) * 1000) / n);
    }
  }
  return Object.fromEntries(names.map((k) => [k, median(per[k])]));
}

interface Row {
  what: string;
  bytes: number;
  ns: Record<string, number>;
  note: string;
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  for (const b of BODIES) {
    log(`request: ${b.name}`);
    // Sanity: the exact path decodes every body; plain JSON.parse refuses the big ones (their digits are gone).
    readJson(b.text, 'the body', decodeRead);
    let plainRefuses = false;
    try {
      decodeRead(JSON.parse(b.text));
    } catch {
      plainRefuses = true;
    }
    if (plainRefuses !== b.big) throw new Error(`${b.name}: plain decode ${plainRefuses ? 'refused' : 'took'} it`);
    const variants: Record<string, Op> = {
      // For a big-integer body, plain has nothing correct to do: it is timed up to its refusal.
      plain: b.big ? () => { try { decodeRead(JSON.parse(b.text)); } catch { /* refused */ } } : () => decodeRead(JSON.parse(b.text)),
      exact: () => readJson(b.text, 'the body', decodeRead),
      lossless: () => decodeRead(parseJson(b.text, 'the body', true)),
      'JSON.parse only': () => JSON.parse(b.text),
      'lossless-json only': () => losslessParse(b.text),
    };
    rows.push({ what: `request: ${b.name}`, bytes: Buffer.byteLength(b.text), ns: measure(variants),
      note: b.big ? 'plain refuses it (400: the digits are gone); exact re-reads it with lossless-json' : 'exact = JSON.parse + decode, no second parse' });
  }
  for (const a of ANSWERS) {
    log(`answer: ${a.name}`);
    // JSON.stringify cannot write a bigint: plain's time is that of the same answer with the values as (rounded) numbers.
    const rounded = a.big ? JSON.parse(JSON.stringify(a.value, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))) as unknown : a.value;
    const variants: Record<string, Op> = { plain: () => JSON.stringify(rounded), exact: () => stringifyJson(a.value) };
    rows.push({ what: `answer: ${a.name}`, bytes: Buffer.byteLength(stringifyJson(a.value)), ns: measure(variants),
      note: a.big ? 'plain writes rounded numbers (wrong digits); exact writes every digit' : 'exact = JSON.stringify' });
  }

  const machine = `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, Node ${process.version}, ${new Date().toISOString()}`;
  const fmt = (ns: number | undefined) => (ns === undefined ? '—' : ns >= 10_000 ? `${(ns / 1000).toFixed(1)} µs` : `${(ns / 1000).toFixed(2)} µs`);
  const ratio = (r: Row, k: string) => (r.ns[k] === undefined ? '—' : (r.ns[k] / r.ns.plain).toFixed(3));
  const lines = [
    `CPU time per body (median of ${ROUNDS} interleaved rounds, ${machine}).`,
    '',
    '| body | bytes | plain | exact | exact / plain | lossless always | lossless / plain | note |',
    '|---|---:|---:|---:|---:|---:|---:|---|',
    ...rows.map((r) => `| ${r.what} | ${r.bytes} | ${fmt(r.ns.plain)} | ${fmt(r.ns.exact)} | **${ratio(r, 'exact')}** | ${fmt(r.ns.lossless)} | ${ratio(r, 'lossless')} | ${r.note} |`),
    '',
    'Parsers alone (the same request bodies, text -> value):',
    '',
    '| body | JSON.parse | lossless-json | lossless / JSON.parse |',
    '|---|---:|---:|---:|',
    ...rows.filter((r) => r.ns['JSON.parse only'] !== undefined).map((r) =>
      `| ${r.what.replace('request: ', '')} | ${fmt(r.ns['JSON.parse only'])} | ${fmt(r.ns['lossless-json only'])} | ${(r.ns['lossless-json only'] / r.ns['JSON.parse only']).toFixed(2)} |`),
  ];
  const md = lines.join('\n');
  process.stdout.write(`${md}\n`);
  if (process.env.BENCH_WRITE !== '0') {
    const dir = path.join(ROOT, 'bench', 'results');
    await writeFile(path.join(dir, 'json64.json'), `${JSON.stringify({ machine, rounds: ROUNDS, roundMs: ROUND_MS, rows }, null, 2)}\n`);
    await writeFile(path.join(dir, 'json64.md'), `# Exact 64-bit JSON: cost on the REST request path (\`npm run bench:json64\`)\n\n${md}\n`);
    log('wrote bench/results/json64.md and json64.json');
  }
}

runMain(async () => main(), log);
