/**
 * Text detection over the REST bridge's image upload: POST the file's bytes with its
 * image Content-Type; the answer is the KServe JSON response with every output,
 * ANNOTATED being the base64 JPEG with the boxes drawn.
 *
 *   node dist/examples/clients/detect-rest.js [picture.jpg] [--url http://127.0.0.1:8000] [--out annotated.jpg] [--json]
 *
 * The same with curl: curl -s localhost:8000/v2/models/text-detector/infer -H 'content-type: image/jpeg' --data-binary @picture.jpg
 */
import { detections, main, parseArgs, pictureFile, report } from './detect-common';

const USAGE = 'usage: detect-rest [picture] [--url http://127.0.0.1:8000] [--out annotated.jpg] [--json]';

interface Output { name: string; shape: number[]; data: number[] | string[] }

main(async () => {
  const args = parseArgs(process.argv.slice(2), process.env.TB_URL ?? 'http://127.0.0.1:8000', USAGE);
  const file = await pictureFile(args);
  const res = await fetch(`${args.endpoint}/v2/models/text-detector/infer`, { method: 'POST', headers: { 'content-type': file.type }, body: file.bytes });
  const body = (await res.json()) as { outputs?: Output[]; error?: string };
  if (!res.ok || !body.outputs) throw new Error(`HTTP ${res.status}: ${body.error ?? JSON.stringify(body)}`);
  const out = Object.fromEntries(body.outputs.map((o) => [o.name, o]));
  const found = detections(out.BOXES.data as number[], out.SCORES.data as number[], (out.COUNT.data as number[])[0]);
  report(args, 'REST', file.name, found, (out.ANNOTATED.data as string[])[0]);
});
