/**
 * The broker's per-stage histograms (core/stage-timings.ts, `tb_stage_seconds`
 * on its metrics port), read before and after a measured window: per stage,
 * how many times it was recorded and its mean and approximate p50 in µs over
 * that window only.
 */

export interface StageCounts {
  count: number;
  sum: number;
  /** Cumulative bucket counts by upper bound (seconds; Infinity for +Inf). */
  buckets: Map<number, number>;
}

/** `path/stage` → counts. */
export type StageSnapshot = Map<string, StageCounts>;

export interface StageRow {
  path: string;
  stage: string;
  /** Recorded this many times per request of the window. */
  perRequest: number;
  meanUs: number;
  /** Upper bound of the bucket holding the median (µs): a coarse p50. */
  p50UpToUs: number;
}

const LINE = /^tb_stage_seconds_(bucket|sum|count)\{path="([^"]+)",stage="([^"]+)"(?:,le="([^"]+)")?\} (\S+)$/;

export async function stageSnapshot(metricsUrl: string): Promise<StageSnapshot> {
  const res = await fetch(metricsUrl);
  const text = await res.text();
  const snap: StageSnapshot = new Map();
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    const key = `${m[2]}/${m[3]}`;
    let c = snap.get(key);
    if (!c) snap.set(key, (c = { count: 0, sum: 0, buckets: new Map() }));
    const v = Number(m[5]);
    if (m[1] === 'count') c.count = v;
    else if (m[1] === 'sum') c.sum = v;
    else c.buckets.set(m[4] === '+Inf' ? Infinity : Number(m[4]), v);
  }
  return snap;
}

/** Per stage over the window between two snapshots; `requests` = answers in the window. */
export function stageDelta(a: StageSnapshot, b: StageSnapshot, requests: number): StageRow[] {
  const rows: StageRow[] = [];
  for (const [key, after] of b) {
    const before = a.get(key);
    const n = after.count - (before?.count ?? 0);
    if (n <= 0) continue;
    const sum = after.sum - (before?.sum ?? 0);
    let p50 = Infinity;
    for (const [le, cum] of [...after.buckets].sort((x, y) => x[0] - y[0])) {
      if (cum - (before?.buckets.get(le) ?? 0) >= n / 2) {
        p50 = le;
        break;
      }
    }
    const [path, stage] = key.split('/');
    rows.push({ path, stage, perRequest: requests > 0 ? n / requests : NaN, meanUs: (sum / n) * 1e6, p50UpToUs: p50 * 1e6 });
  }
  return rows;
}

const STAGE_ORDER = ['parse', 'admit', 'queue', 'batch', 'link_send', 'compute', 'link_receive', 'debatch', 'encode', 'write'];

/** One markdown table: a row per stage, a column pair (mean, ≤p50) per measured point. */
export function stageTable(points: { label: string; rows: StageRow[] }[]): string {
  const keys = new Set<string>();
  for (const p of points) for (const r of p.rows) keys.add(`${r.path}/${r.stage}`);
  const order = (k: string) => STAGE_ORDER.indexOf(k.split('/')[1]);
  const sorted = [...keys].sort((x, y) => order(x) - order(y) || x.localeCompare(y));
  const out: string[] = [];
  out.push(`| stage | ${points.map((p) => `${p.label}: mean µs | p50 ≤ µs`).join(' | ')} |`);
  out.push(`|---|${points.map(() => '---:|---:').join('|')}|`);
  const us = (v: number) => (!Number.isFinite(v) ? '—' : v >= 100 ? Math.round(v).toString() : v.toFixed(1));
  for (const k of sorted) {
    const cells = points.map((p) => {
      const r = p.rows.find((x) => `${x.path}/${x.stage}` === k);
      return r ? `${us(r.meanUs)} | ${us(r.p50UpToUs)}` : '— | —';
    });
    out.push(`| ${k.replace('/', ' ')} | ${cells.join(' | ')} |`);
  }
  return out.join('\n');
}
