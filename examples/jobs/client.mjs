// Submit an asynchronous job to Tensor Broker and fetch its result (Node 18+, no dependencies).
//
//   TB_URL=http://127.0.0.1:8000 node examples/jobs/client.mjs
//
// It sends one row to the `simple` example model (OUTPUT0 = INPUT0 + INPUT1), with an
// Idempotency-Key so a retried submit returns the same job, then follows the job
// until its result is ready, waiting as the broker's Retry-After says.
const base = process.env.TB_URL ?? 'http://127.0.0.1:8000';
const model = process.env.TB_MODEL ?? 'simple';
const headers = { 'content-type': 'application/json', 'idempotency-key': process.env.TB_JOB_KEY ?? `example-${Date.now()}` };
if (process.env.TB_API_KEY) headers.authorization = `Bearer ${process.env.TB_API_KEY}`;

const row = (f) => Array.from({ length: 16 }, (_, i) => f(i));
const body = {
  inputs: [
    { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: row((i) => i) },
    { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: row(() => 1) },
  ],
  ttl_seconds: 3600, // time allowed in the queue
  max_attempts: 3,
  metadata: { source: 'examples/jobs/client.mjs' },
};

const submitted = await fetch(`${base}/v2/models/${model}/jobs`, { method: 'POST', headers, body: JSON.stringify(body) });
if (submitted.status !== 202) throw new Error(`submit: ${submitted.status} ${await submitted.text()}`);
const job = await submitted.json();
const location = submitted.headers.get('location'); // /v2/jobs/{id}
console.log(`job ${job.id} ${job.status}`);

for (;;) {
  const res = await fetch(`${base}${location}/result`, { headers: { authorization: headers.authorization ?? '' } });
  if (res.status === 200) {
    const result = await res.json(); // the same form /infer answers
    for (const out of result.outputs) console.log(`${out.name} ${JSON.stringify(out.data)}`);
    break;
  }
  if (res.status !== 202) {
    // 410: cancelled, expired in the queue, or the result is past result_ttl; 4xx/5xx: the job failed.
    const status = await (await fetch(`${base}${location}`, { headers: { authorization: headers.authorization ?? '' } })).json();
    throw new Error(`job ${job.id} ended ${status.status}: ${status.last_error ?? (await res.text())}`);
  }
  const waitS = Number(res.headers.get('retry-after') ?? '1');
  await new Promise((r) => setTimeout(r, Math.min(waitS, 5) * 1000));
}
