#!/usr/bin/env node
/** The `tensorbroker` command line: serve, and the model-team commands (init, build, models, validate). */
import { Command, Option } from 'commander';
import { OPTIONS, resolveConfig } from './config';
import { startBroker, VERSION } from './server';
import { LANGS, initModel, type Lang } from './commands/init';
import { fetchModels, modelsTable } from './commands/models';
import { settled, startTable } from './commands/start-table';
import { validateModelsFile } from './commands/validate';

const program = new Command('tensorbroker').version(VERSION).description('Inference broker for computer-vision models');

/** Runs a command body; a thrown error becomes one line on stderr and exit code 1. */
const guarded = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => async (...args: A) => {
  try {
    await fn(...args);
  } catch (e) {
    process.stderr.write(`tensorbroker: ${(e as Error).message}\n`);
    process.exit(1);
  }
};

const serve = program.command('serve')
  .description('serve the models of models.yaml over three bridges: KServe v2 REST (HTTP), KServe v2 gRPC and ZeroMQ')
  .addHelpText('after', '\nOn a terminal, a table of the models (runtime, phase, copies) and of the bridge URLs is printed once\n' +
    'the copies have started; logs are JSON lines on stdout either way.');
for (const [flag, env, def, , help] of Object.values(OPTIONS)) {
  serve.option(flag, `${help} [env ${env}, default ${def}]`);
}
serve.action(async (opts: Record<string, string>) => {
  // Commander names each value after its flag (--models -> models); the config keys may differ.
  const flags = Object.fromEntries(
    Object.entries(OPTIONS).map(([key, [flag]]) => [key, opts[new Option(flag).attributeName()]]),
  );
  let config;
  try {
    config = resolveConfig(flags);
  } catch (e) {
    process.stderr.write(`tensorbroker: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const running = await startBroker(config).catch((e: Error) => {
    process.stderr.write(`tensorbroker: failed to start: ${e.message}\n`);
    process.exit(1);
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    running.logger.info({ signal }, 'signal received');
    running.close().then(
      () => process.exit(0),
      (e: Error) => {
        running.logger.error({ err: e }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // A closed terminal or a supervisor's reload must drain like SIGTERM, not kill the broker mid-request.
  process.on('SIGHUP', () => stop('SIGHUP'));
  // A person is watching: show where things are once the first copies are up (or failed).
  if (process.stdout.isTTY) {
    await settled(running, 120_000);
    if (!stopping) process.stdout.write(`\n${startTable(running)}\n`);
  }
});

const init = program.command('init').description('create a project from a template');
init.command('model <name>')
  .description('write a model project: the model (SDK dependency), a test calling it through a broker, a Dockerfile, its models.yaml entry')
  .addOption(new Option('--lang <lang>', 'language of the model').choices(LANGS).makeOptionMandatory())
  .option('--dir <dir>', 'project folder (default ./<name>; must be empty or absent)')
  .option('--sdk <spec>', 'node: the @tensorbroker/sdk dependency (a version range, or a packed .tgz path); python: the SDK wheel file')
  .action(guarded(async (name: string, opts: { lang: Lang; dir?: string; sdk?: string }) => {
    const r = initModel(name, opts);
    process.stdout.write(`created ${r.dir}\n${r.files.map((f) => `  ${f}\n`).join('')}`);
    process.stdout.write(`next: see ${r.dir}/README.md (install the SDK, run the test, \`tensorbroker build ${r.dir}\`)\n`);
  }));

program.command('build <path>')
  .description('build the Docker image of a model project (docker steps as progress), then smoke-test it: it must send READY')
  .option('--tag <tag>', "image tag (default: the project's models.yaml image, else <folder>:dev)")
  .option('--base <image>', 'base image (default: node:20-bookworm-slim if present, else tb-node-base:local made from this host; Python: tb-python-base:local)')
  .option('--no-smoke', 'skip the smoke test')
  .option('--smoke-timeout-ms <ms>', 'how long the image has to send READY', '60000')
  .action(guarded(async (dir: string, opts: { tag?: string; base?: string; smoke: boolean; smokeTimeoutMs: string }) => {
    // Loaded here: it pulls in the image-building code, which `serve` never needs.
    const { buildModel } = await import('./commands/build');
    const timeout = Number(opts.smokeTimeoutMs);
    if (!Number.isInteger(timeout) || timeout <= 0) throw new Error(`--smoke-timeout-ms must be a positive integer (got "${opts.smokeTimeoutMs}")`);
    const r = await buildModel(dir, { tag: opts.tag, base: opts.base, smoke: opts.smoke, smokeTimeoutMs: timeout });
    process.stdout.write(`${r.tag}\n`);
  }));

program.command('models')
  .description("list a running broker's models with their phase and copies (REST repository index + admin API)")
  .option('--url <url>', 'the broker\'s REST address [env TB_URL]', process.env.TB_URL ?? 'http://127.0.0.1:8000')
  .option('--token <token>', 'admin token, to see entries in full [env TB_ADMIN_TOKEN]', process.env.TB_ADMIN_TOKEN)
  .option('--json', 'JSON instead of a table')
  .action(guarded(async (opts: { url: string; token?: string; json?: boolean }) => {
    const rows = await fetchModels(opts.url, opts.token);
    process.stdout.write(opts.json ? `${JSON.stringify(rows, null, 2)}\n` : modelsTable(rows));
  }));

program.command('validate <file>')
  .description('check a models.yaml as the broker would, without starting anything (exit 1 when it has problems)')
  .action(guarded(async (file: string) => {
    const r = await validateModelsFile(file);
    (r.ok ? process.stdout : process.stderr).write(r.text);
    if (!r.ok) process.exitCode = 1;
  }));

program.parseAsync(process.argv);
