/**
 * The composition root: the only module that knows every component.
 * buildBroker() creates and wires them (registry -> broker -> task manager as
 * the broker's CopySource -> bridges), startBuilt() starts copies and binds
 * ports, and the returned close() stops everything in reverse order.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import { Broker } from '../core/broker';
import { FolderBlobStore } from '../jobs/blob-store';
import { registerJobMetrics } from '../jobs/metrics';
import { JobService } from '../jobs/service';
import { jobServiceOptions } from './job-config';
import { jobsRoutes } from '../bridges/rest/jobs-routes';
import { videoJobRunner } from '../bridges/rest/video-jobs';
import { restRoutes } from '../bridges/rest/routes';
import { BodyPool } from '../bridges/rest/body-pool';
import { rootRoute } from '../bridges/rest/root';
import { restServerOptions } from '../bridges/rest/server-options';
import { startGrpcBridge } from '../bridges/grpc/server';
import { startZmqBridge } from '../bridges/zmq/server';
import { AccessControl } from '../bridges/shared/access';
import { installAccessHook } from '../bridges/rest/access-hook';
import { adminRoutes } from '../model-manager/admin-api';
import { adminHooks } from './admin-hooks';
import { loadModelsFile } from '../model-manager/models-file';
import { watchModelsFile, type ModelsWatcher } from '../model-manager/models-watcher';
import { EmbeddedModelRegistry } from '../model-manager/memory-store';
import { createRedis } from '../model-manager/redis-connection';
import { RedisModelRegistry } from '../model-manager/redis-registry';
import type { StoredRegistry } from '../model-manager/stored-registry';
import { DockerRuntime } from '../task-manager/docker-runtime';
import { detectGpus } from '../task-manager/gpu-allocator';
import { MemoryPlacementStore, RedisPlacementStore } from '../task-manager/placement-store';
import { LinkServer } from '../task-manager/link-server';
import { ProcessRuntime } from '../task-manager/process-runtime';
import type { Runtime } from '../task-manager/runtime';
import { TaskManager } from '../task-manager/task-manager';
import { KubeTaskManager } from '../task-manager/kubernetes/kube-task-manager';
import { kubeNamespace, kubeRuntime, linkCurveKeys } from '../task-manager/kubernetes/kube-runtime';
import type { BrokerConfig } from './config';
import { installErrorHandlers } from './http-errors';
import { SharedMemoryRegistry } from '../bridges/shared/shm';
import { Metrics } from './metrics';
import { BrokerDirectory } from '../cluster/directory';
import { HttpForwarder } from '../cluster/forwarder';
import { forwardRoute } from '../cluster/forward-route';
import { RedisCopyBudget } from '../cluster/copy-budget';

/** Several brokers on one Redis: the directory, the forwarder, and the Redis connection they use. */
export interface ClusterParts {
  directory: BrokerDirectory;
  forwarder: HttpForwarder;
  budget: RedisCopyBudget;
  close(): Promise<void>;
}

/** The package version, from the package.json above this file (source or dist). */
export const VERSION: string = (() => {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
  }
  return '0.0.0';
})();

export interface RunningBroker {
  config: BrokerConfig;
  broker: Broker;
  registry: StoredRegistry;
  /** Watches models.yaml (undefined with --watch-models false). */
  watcher?: ModelsWatcher;
  tasks: Tasks;
  /** Asynchronous jobs (undefined when disabled). */
  jobs?: JobService;
  http: FastifyInstance;
  /** Reusable buffers for big REST infer bodies (its counters show reuse). */
  bodyPool: BodyPool;
  /** Ports actually bound (useful with port 0). */
  ports: { http: number; grpc: number; metrics: number; zmq: number };
  logger: Logger;
  /** Graceful stop: refuse new work, finish or fail in-flight requests, stop copies. */
  close(): Promise<void>;
}

/** One model owner per model: on Docker or processes (TaskManager), or as Deployments (KubeTaskManager). */
export type Tasks = TaskManager | KubeTaskManager;

/** Docker when its socket answers a ping, else local processes. */
async function chooseRuntime(config: BrokerConfig, log: Logger): Promise<Runtime> {
  if (config.runtime === 'process') return new ProcessRuntime({ logger: log });
  const docker = () => new DockerRuntime({ socketPath: config.dockerSocket, logger: log, gpuMode: config.gpuMode, credentialsEnv: credentialsEnv(config) });
  if (config.runtime === 'docker') return docker();
  if (await dockerAnswers(config.dockerSocket)) {
    log.info({ socket: config.dockerSocket }, 'runtime: docker (the Docker socket answers)');
    return docker();
  }
  log.info({ socket: config.dockerSocket }, 'runtime: process (no Docker daemon answers on the socket)');
  return new ProcessRuntime({ logger: log });
}

/** The Docker registry credentials from the config, in the env shape image-puller.ts reads. */
function credentialsEnv(config: BrokerConfig): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, DOCKER_CONFIG: process.env.DOCKER_CONFIG };
  if (config.registryServer) env.TB_REGISTRY_SERVER = config.registryServer;
  if (config.registryUsername) env.TB_REGISTRY_USERNAME = config.registryUsername;
  if (config.registryPassword) env.TB_REGISTRY_PASSWORD = config.registryPassword;
  return env;
}

function dockerAnswers(socketPath: string): Promise<boolean> {
  if (!fs.existsSync(socketPath)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/_ping', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** Everything built, nothing listening yet: the parts in creation order (closed in reverse). */
export interface BuiltBroker {
  config: BrokerConfig;
  logger: Logger;
  registry: StoredRegistry;
  /** The models.yaml watcher (--watch-models). */
  watcher?: ModelsWatcher;
  /** System shared memory regions, shared by the REST and gRPC bridges. */
  shm: SharedMemoryRegistry;
  /** Who may call what, on every bridge. */
  access: AccessControl;
  /** REST and gRPC serve TLS with these when set. */
  tls?: { cert: Buffer; key: Buffer };
  /** The per-copy runtime (undefined with the kubernetes runtime: Deployments own the copies). */
  runtime?: Runtime;
  tasks: Tasks;
  broker: Broker;
  jobs?: JobService;
  metrics: Metrics;
  http: FastifyInstance;
  /** Directory of models.yaml (cwd of process copies). */
  modelsDir: string;
  /** Reusable buffers for big REST infer bodies. */
  bodyPool: BodyPool;
  /** Several brokers on one Redis (undefined with the embedded registry, --cluster false or a read-only Redis). */
  cluster?: ClusterParts;
}

/**
 * Builds every component and wires them: registry -> broker (the only registry
 * subscriber) -> task manager (one controller per model, through CopySource)
 * -> HTTP routes. Nothing listens and no copy starts yet.
 */
export async function buildBroker(config: BrokerConfig, logger?: Logger): Promise<BuiltBroker> {
  const log = logger ?? pino({ level: config.logLevel, base: { broker: config.brokerId } });
  const file = await loadModelsFile(config.modelsPath);
  for (const err of file.errors) log.error({ component: 'models-file', file: file.path }, err);
  const seed = file.ok ? { specs: file.specs, path: file.path, invalid: file.invalid } : undefined;
  // Without --redis-url the registry lives in this process (optionally persisted to --registry-file).
  const registry: StoredRegistry = config.redisUrl
    ? await RedisModelRegistry.open({
        redisUrl: config.redisUrl,
        redisCaFile: config.redisCaFile || undefined,
        prefix: config.redisPrefix,
        readOnly: config.redisReadOnly,
        signingKey: config.redisSigningKey,
        logger: log,
        file: seed,
      })
    : await EmbeddedModelRegistry.open({ registryFile: config.registryFile || undefined, signingKey: config.redisSigningKey, logger: log, file: seed });

  // Live models.yaml: each saved edit is applied like an admin change (model-manager/models-watcher.ts).
  const watcher = config.watchModels
    ? watchModelsFile(config.modelsPath, (f) => registry.reload({ specs: f.specs, path: f.path, invalid: f.invalid }), log)
    : undefined;

  const kube = config.runtime === 'kubernetes';
  const runtime = kube ? undefined : await chooseRuntime(config, log.child({ component: 'runtime' }));
  const tcp = kube || config.linkTransport === 'tcp';
  const link = new LinkServer({
    socketDir: config.socketDir, brokerId: config.brokerId, heartbeatMs: config.heartbeatMs, logger: log.child({ component: 'link' }),
    ...(tcp ? { transport: 'tcp' as const, tcpHost: config.linkHost, tcpPort: config.linkPort, ...(config.linkAdvertise ? { advertise: config.linkAdvertise } : {}) } : {}),
    // A pod may connect before the pod informer reports it: its READY waits for it a while.
    ...(kube ? { holdUnknownReadyMs: 30_000 } : {}),
    // Across nodes the link is always encrypted and authenticated.
    ...(tcp && (kube || config.linkCurve) ? { curve: linkCurveKeys(config.curvePublicKey, config.curveSecretKey, log) } : {}),
  });
  // Before anything else touches copies: refuses to start when a live broker holds this broker id's socket.
  await link.start().catch(async (err: Error) => {
    await registry.close();
    throw err;
  });
  const metrics = new Metrics();
  const cluster = clusterParts(config, log, metrics);
  let tasks: Tasks;
  if (kube) {
    const namespace = kubeNamespace(config.k8sNamespace);
    tasks = new KubeTaskManager({
      kube: await kubeRuntime({ namespace, server: config.k8sApiServer || undefined, kubeconfig: config.k8sKubeconfig || undefined }),
      link, brokerId: config.brokerId, namespace, logger: log, heartbeatMs: config.heartbeatMs, autoscaleIntervalMs: config.autoscaleIntervalMs,
      // With several brokers on one Redis, the Deployments of a broker whose directory lease expired are removed.
      budget: cluster?.budget,
      ...(cluster ? { liveness: { isAlive: async (id: string) => (await cluster.directory.brokers()).some((b) => b.id === id) } } : {}),
    });
  } else {
    const inventory = await detectGpus(config.gpus);
    if (inventory.gpus.length > 0) log.info({ component: 'task-manager', gpus: inventory.gpus, source: inventory.source, mode: config.gpuMode }, 'GPU inventory');
    // Placements go to Redis only when this broker may write it.
    const store = config.redisUrl && !config.redisReadOnly
      ? new RedisPlacementStore(createRedis({ url: config.redisUrl, caFile: config.redisCaFile || undefined }, { maxRetriesPerRequest: 2 }), config.redisPrefix, config.brokerId, true)
      : new MemoryPlacementStore();
    tasks = new TaskManager({
      budget: cluster?.budget,
      runtime: runtime!,
      link,
      brokerId: config.brokerId,
      logger: log,
      heartbeatMs: config.heartbeatMs,
      cwd: file.dir,
      gpus: inventory.gpus,
      store,
      caps: { maxCopies: config.maxCopies || undefined, maxMemoryMb: config.maxMemoryMb || undefined },
      autoscaleIntervalMs: config.autoscaleIntervalMs,
    });
  }
  tasks.on('copy-failure', (model, kind) => metrics.copyFailures.inc({ model, kind }));
  tasks.on('scale', (model, direction) => direction !== 'none' && metrics.scaleEvents.inc({ model, direction }));
  tasks.on('scale-refused', (model, cap) => metrics.scaleRefused.inc({ model, cap }));
  const broker = new Broker({
    registry,
    copies: tasks,
    logger: log,
    observer: metrics,
    limits: { maxTensors: config.maxTensors, maxElements: config.maxElements, maxStringBytes: config.maxStringBytes },
    admin: adminHooks(registry, config.adminToken),
    cluster: cluster && { sequences: cluster.directory, forwarder: cluster.forwarder, overflow: (m, max) => cluster.budget.overflow(m, max) },
    backgroundIdleMs: config.jobsLiveIdleMs,
  });
  // Models at zero are described from the metadata kept from their last READY: read it before serving.
  await broker.warm();

  // One access policy for every bridge (bridges/shared/access.ts); TLS for REST and gRPC from one certificate.
  const access = new AccessControl({ adminToken: config.adminToken, apiKeys: config.apiKeys });
  const tls = config.tlsCert && config.tlsKey ? { cert: fs.readFileSync(config.tlsCert), key: fs.readFileSync(config.tlsKey) } : undefined;
  const app = Fastify({
    ...restServerOptions(),
    ...(tls ? { https: tls } : {}),
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    // One line per request would dominate the log at 10k req/s: errors are logged by the error handler.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.bodyLimit,
    requestIdHeader: 'x-request-id',
    genReqId: requestIds(),
  });
  installErrorHandlers(app);
  installAccessHook(app, access);
  // One registry of shared memory regions for both bridges: a region registered over REST is usable over gRPC.
  const shm = new SharedMemoryRegistry();
  // TB_BODY_POOL_POISON=1 (debugging, tests): released body buffers are overwritten, so a late reader shows.
  const bodyPool = new BodyPool({ poison: process.env.TB_BODY_POOL_POISON === '1' });
  await app.register(restRoutes, { broker, version: VERSION, bodyLimit: config.bodyLimit, maxElements: config.maxElements, maxVideoBytes: config.maxVideoBytes, ffmpeg: config.ffmpeg, shm,
    bodyIdleTimeoutMs: config.bodyIdleTimeoutMs, bodyTimeoutMs: config.bodyTimeoutMs, compressThreshold: config.compressThreshold,
    bodyPool,
  });
  await app.register(adminRoutes, { registry, tasks, token: config.adminToken, logger: log });
  await app.register(rootRoute, { version: VERSION });
  if (cluster) {
    await app.register(forwardRoute, { broker, bodyLimit: config.bodyLimit, maxFrames: config.maxTensors + 1, token: config.clusterToken ?? config.adminToken });
  }
  // Jobs (opt-in: --jobs) live in the same Redis as the registry, and run through broker.infer() like a bridge's requests.
  const jc = config.jobs ?? {};
  const jobsOn = (jc.enabled ?? config.jobsEnabled) && config.redisUrl !== '';
  if ((jc.enabled ?? config.jobsEnabled) && !jobsOn) log.warn({ component: 'jobs' }, 'asynchronous jobs need --redis-url: they stay off');
  const jobs = !jobsOn ? undefined : new JobService({
    redisUrl: config.redisUrl, prefix: config.redisPrefix, broker, logger: log, consumer: `${config.brokerId}-${process.pid}`,
    blobs: new FolderBlobStore(jc.blobDir ?? (config.jobsBlobDir || path.join(os.tmpdir(), 'tensorbroker-jobs', config.brokerId))),
    ...jobServiceOptions(config),
    // The autoscaler counts each model's job backlog as well as its live queue (scale from zero included).
    onBacklog: (model, waiting) => tasks.setBacklog(model, waiting),
    webhooks: { ...jc.webhooks, allowHosts: jc.webhooks?.allowHosts ?? config.jobsWebhookHosts, secret: jc.webhooks?.secret ?? config.jobsWebhookSecret },
    // Video jobs decode with the REST bridge's ffmpeg code, as /infer does: injected here, so jobs/ imports no bridge.
    video: videoJobRunner({ broker, maxVideoBytes: config.maxVideoBytes, maxElements: config.maxElements, ffmpeg: config.ffmpeg }),
  });
  if (jobs) {
    await app.register(jobsRoutes, { broker, jobs, adminToken: config.adminToken, bodyLimit: config.bodyLimit, maxElements: config.maxElements, maxVideoBytes: config.maxVideoBytes,
      timeouts: { idleMs: config.bodyIdleTimeoutMs, totalMs: config.bodyTimeoutMs }, sseHeartbeatMs: jc.sseHeartbeatMs });
    registerJobMetrics(metrics.registry, jobs, () => broker.models().map((m) => m.name));
  }
  return { config, logger: log, registry, watcher, runtime, tasks, broker, jobs, metrics, http: app, shm, access, tls, modelsDir: file.dir, bodyPool, cluster };
}

/** The broker directory and the forwarder when several brokers may share this Redis (README "Several brokers"). */
function clusterParts(config: BrokerConfig, log: Logger, metrics: Metrics): ClusterParts | undefined {
  if (!config.redisUrl || !config.cluster) return undefined;
  if (config.redisReadOnly) {
    log.warn({ component: 'cluster' }, 'a read-only Redis: this broker does not join the broker directory (its stateful sequences are not shared)');
    return undefined;
  }
  const redis = createRedis({ url: config.redisUrl, caFile: config.redisCaFile || undefined }, { maxRetriesPerRequest: 2 });
  const directory = new BrokerDirectory({ redis, prefix: config.redisPrefix, self: { id: config.brokerId, url: config.advertiseUrl }, leaseMs: config.clusterLeaseMs, logger: log });
  const forwarder = new HttpForwarder({ self: config.brokerId, token: config.clusterToken ?? config.adminToken, maxFrames: config.maxTensors + 1,
    outcome: (model, outcome) => metrics.forwarded.inc({ model, outcome }) });
  const budget = new RedisCopyBudget(redis, config.redisPrefix, directory, log);
  directory.onLapse = () => budget.reassert();
  return {
    directory, forwarder, budget,
    close: async () => {
      await directory.stop();
      forwarder.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}

/** Starts the copies (adoption first) and binds every port; returns the running broker with its close(). */
export async function startBuilt(b: BuiltBroker): Promise<RunningBroker> {
  const { config, logger: log, registry, watcher, tasks, broker, jobs, metrics, http: app, access, tls } = b;
  // Several brokers: join the directory before any copy claims a place in the shared budget.
  await b.cluster?.directory.start();
  // Copies start in the background: the HTTP side answers (and queues) meanwhile.
  const started = tasks.start(registry.list()).catch((err: unknown) => log.error({ component: 'task-manager', err }, 'starting model copies failed'));

  // While draining, close each connection after its answer: keep-alive sockets
  // would otherwise hold app.close() open for fastify's 72 s keep-alive timeout.
  let draining = false;
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (draining) reply.header('connection', 'close');
    done(null, payload);
  });
  const shm = b.shm;
  await app.listen({ host: config.host, port: config.httpPort });
  jobs?.start();
  const httpPort = (app.server.address() as { port: number }).port;
  if (b.cluster) {
    const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host.includes(':') ? `[${config.host}]` : config.host;
    await b.cluster.directory.advertise(config.advertiseUrl || `${tls ? 'https' : 'http'}://${host}:${httpPort}`);
  }

  const refreshCopies = () => {
    metrics.unavailable.reset();
    const unavailable = new Set(tasks.unavailableModels());
    for (const s of registry.list()) metrics.unavailable.set({ model: s.name }, unavailable.has(s.name) ? 1 : 0);
    metrics.demand.reset();
    for (const l of broker.load()) metrics.demand.set({ model: l.model }, l.queued + l.running);
    metrics.gpusInUse.reset();
    for (const g of tasks.gpuUsage()) if (g.model) metrics.gpusInUse.inc({ model: g.model });
    metrics.setCopies(tasks.copies().reduce<{ model: string; state: string; count: number }[]>((acc, c) => {
      const row = acc.find((r) => r.model === c.model && r.state === c.state);
      if (row) row.count++;
      else acc.push({ model: c.model, state: c.state, count: 1 });
      return acc;
    }, []));
  };
  const metricsServer: http.Server = await metrics.serve(config.host, config.metricsPort, refreshCopies);
  const metricsPort = (metricsServer.address() as { port: number }).port;
  const grpc = await startGrpcBridge({
    broker,
    host: config.host,
    port: config.grpcPort,
    maxMessageBytes: config.grpcMaxMessageBytes,
    logger: log, // the bridge adds its own component key
    version: VERSION,
    shm,
    access,
    tls,
    jobs,
  });
  const zmq = await startZmqBridge({
    broker, host: config.host, port: config.zmqPort, maxMessageBytes: config.bodyLimit, maxFrames: config.maxTensors + 2, access,
    closeGraceMs: config.zmqCloseGraceMs, maxConnections: Math.floor(config.zmqMaxConnections), logger: log.child({ component: 'zmq' }), jobs,
  });
  log.info({ component: 'server', http: httpPort, grpc: grpc.port, metrics: metricsPort, zmq: zmq.port, runtime: b.runtime?.kind ?? config.runtime, models: registry.list().map((s) => s.name) }, 'tensorbroker serving');

  let closing: Promise<void> | undefined;
  /** Reverse creation order: requests, bridges, metrics, copies (with link, runtime, store), registry. */
  const close = () =>
    (closing ??= (async () => {
      const slog = log.child({ component: 'server' });
      slog.info('shutting down');
      const t0 = Date.now();
      await watcher?.close();
      draining = true;
      // Running jobs are abandoned without a verdict: their entries are reclaimed after the lease (here or by another broker).
      await jobs?.stop();
      await broker.close(config.shutdownGraceMs);
      slog.info({ ms: Date.now() - t0 }, 'requests drained');
      await Promise.all([app.close(), zmq.close(), grpc.close(config.shutdownGraceMs)]);
      await shm.close();
      slog.info({ ms: Date.now() - t0 }, 'bridges closed');
      await new Promise<void>((r) => metricsServer.close(() => r()));
      await started;
      await tasks.close(config.shutdownGraceMs);
      slog.info({ ms: Date.now() - t0 }, 'model copies stopped');
      await b.cluster?.close(); // after the copies gave their budget places back
      await registry.close(); // tasks.close() closed the link, the runtime and the placement store
      slog.info('stopped');
    })());

  return { config, broker, registry, watcher, tasks, jobs, http: app, bodyPool: b.bodyPool, ports: { http: httpPort, grpc: grpc.port, metrics: metricsPort, zmq: zmq.port }, logger: log, close };
}

/** build, then start. */
export async function startBroker(config: BrokerConfig, logger?: Logger): Promise<RunningBroker> {
  return startBuilt(await buildBroker(config, logger));
}

/** Request ids: the client's x-request-id when given, else a short process-unique one. */
function requestIds() {
  let n = 0;
  const prefix = Date.now().toString(36);
  return () => `${prefix}-${(++n).toString(36)}`;
}
