#!/usr/bin/env node
/** The `tensorbroker` command line. */
import { Command, Option } from 'commander';
import { OPTIONS, resolveConfig } from './config';
import { startBroker, VERSION } from './server';

const program = new Command('tensorbroker').version(VERSION).description('Inference broker for computer-vision models');

const serve = program.command('serve').description('serve the models of models.yaml over KServe v2 REST');
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
});

program.parseAsync(process.argv);
