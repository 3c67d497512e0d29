/**
 * The HTTP floor: a bare node:http server (run as its own process by the
 * benchmark) that reads the request body and answers a fixed reply — the same
 * bytes the broker answers for `simple` — with no broker behind it. Prints its
 * port on stdout. Reply text in env BENCH_REPLY; binds 127.0.0.1 only.
 */
import http from 'node:http';

const reply = Buffer.from(process.env.BENCH_REPLY ?? '{}');
const server = http.createServer((req, res) => {
  req.on('data', () => undefined);
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': reply.length });
    res.end(reply);
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
