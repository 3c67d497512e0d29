import tseslint from 'typescript-eslint';

/**
 * The layering gate (eslint's no-restricted-imports, no extra dependency):
 * an import that crosses a forbidden line fails `npm run lint`.
 */
const PROTOCOL_LIBS = ['zeromq', 'zeromq/*', '@grpc/*', 'fastify', 'fastify/*', '@fastify/*', 'ioredis', 'dockerode'];
const layer = (files, patterns, why) => ({
  files,
  rules: { 'no-restricted-imports': ['error', { patterns: [{ group: patterns, message: why }] }] },
});

export default tseslint.config(
  { ignores: ['dist/**', 'sdk/node/dist/**', 'node_modules/**', 'proto/gen/**', 'sdk/python/**', '**/*.js', '**/*.mjs'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  layer(['core/**/*.ts'], ['**/bridges/**', '**/task-manager/**', '**/model-manager/**', '**/cluster/**', '**/app/**', ...PROTOCOL_LIBS],
    'core knows no bridge, task manager, registry implementation, Docker or protocol library: it owns the interfaces they implement'),
  layer(['bridges/**/*.ts'], ['**/task-manager/**', '**/model-manager/**', '**/cluster/**', '**/app/**'],
    'bridges know only the broker (core/broker.ts BrokerApi)'),
  layer(['bridges/rest/**/*.ts'], ['**/bridges/grpc/**', '**/bridges/zmq/**', '../grpc/**', '../zmq/**'], 'bridges import nothing from each other (shared code goes to bridges/shared)'),
  layer(['bridges/grpc/**/*.ts'], ['**/bridges/rest/**', '**/bridges/zmq/**', '../rest/**', '../zmq/**'], 'bridges import nothing from each other (shared code goes to bridges/shared)'),
  layer(['bridges/zmq/**/*.ts'], ['**/bridges/rest/**', '**/bridges/grpc/**', '../rest/**', '../grpc/**'], 'bridges import nothing from each other (shared code goes to bridges/shared)'),
  layer(['cluster/**/*.ts'], ['**/bridges/**', '**/task-manager/**', '**/model-manager/**', '**/app/**'],
    'the cluster parts (broker directory, forwarding) implement core/cluster.ts on Redis and HTTP: they know the core and the wire format, never a bridge, the task manager, the registry or the app'),
  layer(['jobs/**/*.ts'], ['**/bridges/**', '**/task-manager/**', '**/model-manager/**', '**/app/**'],
    'the job runner depends on the broker\'s infer() (core/broker.ts) like a bridge, never on the task manager, the registry or a bridge'),
  layer(['sdk/**/*.ts', 'proto/**/*.ts'], ['**/core/**', '**/bridges/**', '**/task-manager/**', '**/model-manager/**', '**/app/**'],
    'the wire format and the SDKs stand on proto/ only, never on the broker'),
  layer(['examples/**/*.ts'], ['**/core/**', '**/bridges/**', '**/task-manager/**', '**/model-manager/**', '**/app/**'],
    'examples use the SDK and the wire format, never the broker\'s insides'),
);
