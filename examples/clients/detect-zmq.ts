/**
 * Text detection over the ZeroMQ bridge with the Node ZmqClient (sdk/node): the picture
 * decoded to RGB with sharp, sent as a UINT8 [1, H, W, 3] tensor frame.
 *
 *   node dist/examples/clients/detect-zmq.js [picture.jpg] [--endpoint tcp://127.0.0.1:7787] [--out annotated.jpg] [--json]
 */
import { ZmqClient, bytesElements, typedArray } from '../../sdk/node';
import { detections, main, parseArgs, pictureRgb, report } from './detect-common';

const USAGE = 'usage: detect-zmq [picture] [--endpoint tcp://127.0.0.1:7787] [--out annotated.jpg] [--json]';

main(async () => {
  const args = parseArgs(process.argv.slice(2), process.env.TB_ZMQ_ENDPOINT ?? 'tcp://127.0.0.1:7787', USAGE);
  const p = await pictureRgb(args);
  const client = new ZmqClient(args.endpoint, { timeoutMs: 60_000 });
  try {
    const r = await client.infer('text-detector', [{ name: 'IMAGE', datatype: 'UINT8', shape: [1, p.height, p.width, 3], data: p.data }], {
      outputs: ['BOXES', 'SCORES', 'COUNT', 'ANNOTATED'],
    });
    const out = Object.fromEntries(r.outputs.map((t) => [t.name, t]));
    const count = (typedArray(out.COUNT) as Int32Array)[0];
    const found = detections(typedArray(out.BOXES) as Float32Array, typedArray(out.SCORES) as Float32Array, count);
    report(args, 'ZeroMQ', p.name, found, Buffer.from(bytesElements(out.ANNOTATED)[0]));
  } finally {
    await client.close();
  }
});
