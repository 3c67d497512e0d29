// Child process driven by tests/e2e/kube-client.test.ts: runs KubeDeployments
// (dist/, with the real @kubernetes/client-node, which needs Node >= 22.19)
// against the FAKE API server. One JSON request per stdin line
// {id, method, args}; one JSON answer per stdout line {id, result} or {id, error}.
'use strict';
const path = require('node:path');
const readline = require('node:readline');
const { KubeDeployments } = require(path.join(__dirname, '..', '..', 'dist', 'task-manager', 'kubernetes', 'kube-deployments.js'));

async function main() {
  const [server, namespace] = process.argv.slice(2);
  const kube = await KubeDeployments.connect({ server, namespace, token: 'fake-token' });
  const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
  send({ id: 0, result: 'connected' });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const { id, method, args } = JSON.parse(line);
    try {
      if (method === 'watchPods') {
        // Pod changes stream as lines without an id.
        await kube.watchPods(args[0], (change, pod) => send({ change, pod }), (err) => send({ watchError: String(err && err.message) }));
        send({ id, result: 'watching' });
        continue;
      }
      send({ id, result: await kube[method](...args) });
    } catch (err) {
      send({ id, error: { name: err.name, code: err.code, reason: err.reason, message: err.message } });
    }
  }
  // stdin closed: the test is done (an informer would keep the process alive).
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`driver failed: ${err && err.stack}\n`);
  process.exit(1);
});
