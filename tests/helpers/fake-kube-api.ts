/**
 * A FAKE Kubernetes API server on loopback, for tests of the Kubernetes
 * runtime (no kube-apiserver, kind or k3s can run here). It is not
 * Kubernetes: it speaks the real REST paths of Deployments (with /scale) and
 * Pods in namespaces, list and watch with resourceVersion (a watch from a
 * compacted version gets the 410 Gone ERROR event that forces a re-list), and
 * answers errors as `Status` bodies (404 NotFound, 409 AlreadyExists/Conflict,
 * 422 Invalid from the OpenAPI schemas and the server-side rules). A tiny
 * "controller" keeps each Deployment's pods at its replicas; tests move pods
 * through Pending, Running, Ready, Unschedulable, ImagePullBackOff,
 * CrashLoopBackOff and OOMKilled with setPodState().
 */
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { selectorChangeProblem, serverSideProblems } from '../../task-manager/kubernetes/rules';
import { strategicMerge, type KubeObject } from './kustomize-lite';

export type PodState = 'Pending' | 'Running' | 'Ready' | 'Unschedulable' | 'ImagePullBackOff' | 'CrashLoopBackOff' | 'OOMKilled';
type Kind = 'deployments' | 'pods' | 'secrets';
type Reply = { code: number; body?: unknown; text?: string };
type WatchEvent = { type: 'ADDED' | 'MODIFIED' | 'DELETED'; object: KubeObject; rv: number };

class HttpStatus extends Error {
  constructor(readonly code: number, readonly reason: string, message: string, readonly details?: KubeObject) {
    super(message);
  }
}

export function statusBody(code: number, reason: string, message: string, details?: KubeObject): KubeObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

/** Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated. */
export function matchesSelector(labels: Record<string, string> = {}, selector?: string): boolean {
  if (!selector) return true;
  return selector.split(',').every((term) => {
    const t = term.trim();
    let m: RegExpMatchArray | null;
    if ((m = t.match(/^([^!=]+)!=(.*)$/))) return labels[m[1]] !== m[2];
    if ((m = t.match(/^([^!=]+)==?(.*)$/))) return labels[m[1]] === m[2];
    if (t.startsWith('!')) return !(t.slice(1) in labels);
    return t in labels;
  });
}

function schemaError(o: KubeObject): string | undefined {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Deployment } = require('kubernetes-models/apps/v1/Deployment') as { Deployment: new (d: unknown) => { validate(): void } };
  try {
    new Deployment(o).validate();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** What the fake's pod "runner" (tests/helpers/fake-kubelet.ts) hears: a pod to run, a pod gone. */
export interface FakeKubeEvents {
  'pod-added': [pod: KubeObject];
  'pod-deleted': [pod: KubeObject];
}

const DELETION_COST = 'controller.kubernetes.io/pod-deletion-cost';

export class FakeKubeApi extends EventEmitter<FakeKubeEvents> {
  private server?: http.Server;
  private rv = 1;
  private readonly store: Record<Kind, Map<string, KubeObject>> = { deployments: new Map(), pods: new Map(), secrets: new Map() };
  private readonly history: Record<Kind, WatchEvent[]> = { deployments: [], pods: [], secrets: [] };
  /** Watches from a resourceVersion below this get 410 Gone. */
  private compactedBefore: Record<Kind, number> = { deployments: 0, pods: 0, secrets: 0 };
  private readonly watchers = new Set<{ kind: Kind; ns: string; selector?: string; res: http.ServerResponse }>();
  /** Watches answered 410 Gone. */
  goneSent = 0;
  /** Every request, "METHOD path", for assertions. */
  readonly requests: string[] = [];
  url = '';

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** Forgets the watch history: a watch from an older resourceVersion now gets 410 Gone. */
  compact(): void {
    for (const kind of ['deployments', 'pods', 'secrets'] as Kind[]) {
      this.compactedBefore[kind] = this.rv;
      this.history[kind] = [];
    }
  }

  /** Ends every open watch (as an API server restart or a watch timeout does): clients watch again. */
  dropWatches(): void {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
  }

  pods(ns: string, selector?: string): KubeObject[] {
    return [...this.store.pods.values()].filter((p) => p.metadata.namespace === ns && matchesSelector(p.metadata.labels, selector));
  }

  deployment(ns: string, name: string): KubeObject | undefined {
    return this.store.deployments.get(`${ns}/${name}`);
  }

  deployments(ns: string): KubeObject[] {
    return [...this.store.deployments.values()].filter((d) => d.metadata.namespace === ns);
  }

  pod(ns: string, name: string): KubeObject | undefined {
    return this.store.pods.get(`${ns}/${name}`);
  }

  /** A Secret's data, decoded (stringData is folded into data on write, as the API server does). */
  secret(ns: string, name: string): Record<string, string> | undefined {
    const s = this.store.secrets.get(`${ns}/${name}`);
    if (!s) return undefined;
    return Object.fromEntries(Object.entries((s.data ?? {}) as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
  }

  /** Stores a pod's status as given (the fake kubelet reports a process it runs). */
  setPodStatus(ns: string, name: string, status: KubeObject): void {
    const pod = this.store.pods.get(`${ns}/${name}`);
    if (pod) this.put('pods', { ...pod, status }, 'MODIFIED');
  }

  /** Moves a pod to a state, with the status fields and reasons a kubelet would report. */
  setPodState(ns: string, name: string, state: PodState): void {
    const pod = this.store.pods.get(`${ns}/${name}`);
    if (!pod) throw new Error(`fake: no pod ${ns}/${name}`);
    const container = pod.spec.containers[0].name as string;
    const restarts = (pod.status?.containerStatuses?.[0]?.restartCount as number | undefined) ?? 0;
    const cs = (over: KubeObject) => [{ name: container, image: pod.spec.containers[0].image, ready: false, restartCount: restarts, ...over }];
    const scheduled = { type: 'PodScheduled', status: 'True' };
    const status: Record<PodState, KubeObject> = {
      Pending: { phase: 'Pending', conditions: [scheduled], containerStatuses: cs({ state: { waiting: { reason: 'ContainerCreating' } } }) },
      Unschedulable: {
        phase: 'Pending',
        conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: '0/3 nodes are available: 3 Insufficient nvidia.com/gpu.' }],
      },
      ImagePullBackOff: {
        phase: 'Pending', conditions: [scheduled],
        containerStatuses: cs({ state: { waiting: { reason: 'ImagePullBackOff', message: `Back-off pulling image "${pod.spec.containers[0].image}"` } } }),
      },
      Running: { phase: 'Running', podIP: '10.0.0.9', conditions: [scheduled, { type: 'Ready', status: 'False' }], containerStatuses: cs({ state: { running: {} } }) },
      Ready: {
        phase: 'Running', podIP: '10.0.0.9', conditions: [scheduled, { type: 'Ready', status: 'True' }],
        containerStatuses: cs({ ready: true, state: { running: {} } }),
      },
      CrashLoopBackOff: {
        phase: 'Running', conditions: [scheduled, { type: 'Ready', status: 'False' }],
        containerStatuses: cs({
          restartCount: restarts + 1,
          state: { waiting: { reason: 'CrashLoopBackOff', message: `back-off 10s restarting failed container=${container}` } },
          lastState: { terminated: { exitCode: 1, reason: 'Error' } },
        }),
      },
      OOMKilled: {
        phase: 'Running', conditions: [scheduled, { type: 'Ready', status: 'False' }],
        containerStatuses: cs({ restartCount: restarts + 1, state: { terminated: { exitCode: 137, reason: 'OOMKilled' } }, lastState: { terminated: { exitCode: 137, reason: 'OOMKilled' } } }),
      },
    };
    this.put('pods', { ...pod, status: status[state] }, 'MODIFIED');
  }

  // --- storage and events ---

  private put(kind: Kind, o: KubeObject, type: 'ADDED' | 'MODIFIED'): KubeObject {
    const rv = ++this.rv;
    const obj = { ...o, metadata: { ...o.metadata, resourceVersion: String(rv) } };
    this.store[kind].set(`${obj.metadata.namespace}/${obj.metadata.name}`, obj);
    this.broadcast(kind, { type, object: obj, rv });
    return obj;
  }

  private remove(kind: Kind, ns: string, name: string): KubeObject | undefined {
    const o = this.store[kind].get(`${ns}/${name}`);
    if (!o) return undefined;
    this.store[kind].delete(`${ns}/${name}`);
    const rv = ++this.rv;
    const obj = { ...o, metadata: { ...o.metadata, resourceVersion: String(rv) } };
    this.broadcast(kind, { type: 'DELETED', object: obj, rv });
    return obj;
  }

  private broadcast(kind: Kind, e: WatchEvent): void {
    this.history[kind].push(e);
    for (const w of this.watchers) {
      if (w.kind === kind && w.ns === e.object.metadata.namespace && matchesSelector(e.object.metadata.labels, w.selector)) {
        w.res.write(JSON.stringify({ type: e.type, object: e.object }) + '\n');
      }
    }
  }

  /** The fake controller: a Deployment's pods follow its replicas and template. */
  private reconcilePods(d: KubeObject): void {
    const ns = d.metadata.namespace as string;
    const sel = Object.entries(d.spec.selector.matchLabels as Record<string, string>).map(([k, v]) => `${k}=${v}`).join(',');
    const hash = createHash('sha256').update(JSON.stringify(d.spec.template)).digest('hex').slice(0, 10);
    const pods = this.pods(ns, sel);
    for (const p of pods) if (p.metadata.labels['pod-template-hash'] !== hash) this.removePod(ns, p.metadata.name);
    // As a ReplicaSet does on a scale-down: the lowest pod-deletion-cost goes first, then the newest.
    const cost = (p: KubeObject) => Number(p.metadata.annotations?.[DELETION_COST] ?? 0);
    const current = this.pods(ns, sel).sort((a, b) => cost(b) - cost(a));
    const want = (d.spec.replicas as number | undefined) ?? 1;
    for (const p of current.slice(want)) this.removePod(ns, p.metadata.name);
    for (let i = current.length; i < want; i++) {
      const name = `${d.metadata.name}-${hash}-${randomBytes(3).toString('hex').slice(0, 5)}`;
      this.put('pods', {
        apiVersion: 'v1', kind: 'Pod',
        metadata: {
          name, namespace: ns, uid: randomBytes(8).toString('hex'),
          labels: { ...d.spec.template.metadata.labels, 'pod-template-hash': hash },
          annotations: d.spec.template.metadata.annotations ?? {},
          ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${d.metadata.name}-${hash}`, uid: 'fake', controller: true }],
        },
        spec: d.spec.template.spec,
        status: { phase: 'Pending', conditions: [] },
      }, 'ADDED');
      this.emit('pod-added', this.store.pods.get(`${ns}/${name}`)!);
    }
  }

  private removePod(ns: string, name: string): KubeObject | undefined {
    const gone = this.remove('pods', ns, name);
    if (gone) this.emit('pod-deleted', gone);
    return gone;
  }

  // --- HTTP ---

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    this.requests.push(`${req.method} ${url.pathname}`);
    try {
      const body = await readJson(req);
      const m =
        url.pathname.match(/^\/apis\/apps\/v1\/namespaces\/([^/]+)\/(deployments)(?:\/([^/]+)(?:\/(scale))?)?$/) ??
        url.pathname.match(/^\/api\/v1\/namespaces\/([^/]+)\/(pods)(?:\/([^/]+)(?:\/(log))?)?$/) ??
        url.pathname.match(/^\/api\/v1\/namespaces\/([^/]+)\/(secrets)(?:\/([^/]+))?$/);
      if (!m) throw new HttpStatus(404, 'NotFound', `the server could not find the requested resource (fake: ${url.pathname})`);
      const [, ns, kindStr, name, sub] = m;
      const kind = kindStr as Kind;
      const out: Reply | undefined = name ? this.item(req.method ?? 'GET', kind, ns, name, sub, body, req.headers['content-type']) : this.collection(req, res, url, kind, ns, body);
      if (out === undefined) return; // a watch owns the response
      res.writeHead(out.code, { 'content-type': out.text !== undefined ? 'text/plain' : 'application/json' });
      res.end(out.text ?? JSON.stringify(out.body));
    } catch (err) {
      const e = err instanceof HttpStatus ? err : new HttpStatus(500, 'InternalError', (err as Error).message);
      res.writeHead(e.code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(statusBody(e.code, e.reason, e.message, e.details)));
    }
  }

  private collection(req: http.IncomingMessage, res: http.ServerResponse, url: URL, kind: Kind, ns: string, body: KubeObject | undefined): Reply | undefined {
    const selector = url.searchParams.get('labelSelector') ?? undefined;
    if (req.method === 'GET') {
      const watch = url.searchParams.get('watch');
      if (watch === 'true' || watch === '1') return this.watch(res, kind, ns, selector, url.searchParams.get('resourceVersion'));
      const items = [...this.store[kind].values()].filter((o) => o.metadata.namespace === ns && matchesSelector(o.metadata.labels, selector));
      const listKind = kind === 'pods' ? 'PodList' : kind === 'secrets' ? 'SecretList' : 'DeploymentList';
      return { code: 200, body: { apiVersion: kind === 'deployments' ? 'apps/v1' : 'v1', kind: listKind, metadata: { resourceVersion: String(this.rv) }, items } };
    }
    if (req.method === 'POST' && kind === 'deployments') {
      if (!body) throw new HttpStatus(400, 'BadRequest', 'fake: a JSON body is required');
      const d = { ...body, metadata: { ...body.metadata, namespace: ns } };
      this.validate(d);
      if (this.store.deployments.has(`${ns}/${d.metadata.name}`)) {
        throw new HttpStatus(409, 'AlreadyExists', `deployments.apps "${d.metadata.name}" already exists`, { name: d.metadata.name, group: 'apps', kind: 'deployments' });
      }
      const saved = this.put('deployments', { ...d, metadata: { ...d.metadata, uid: randomBytes(8).toString('hex'), generation: 1 } }, 'ADDED');
      this.reconcilePods(saved);
      return { code: 201, body: saved };
    }
    if (req.method === 'POST' && kind === 'secrets') {
      if (!body?.metadata?.name) throw new HttpStatus(422, 'Invalid', 'Secret "" is invalid: metadata.name: Required value');
      if (this.store.secrets.has(`${ns}/${body.metadata.name}`)) {
        throw new HttpStatus(409, 'AlreadyExists', `secrets "${body.metadata.name}" already exists`, { name: body.metadata.name, kind: 'secrets' });
      }
      const data: Record<string, string> = { ...(body.data ?? {}) };
      for (const [k, v] of Object.entries((body.stringData ?? {}) as Record<string, string>)) data[k] = Buffer.from(v).toString('base64');
      const { stringData: _sd, ...rest } = body;
      const saved = this.put('secrets', { ...rest, data, metadata: { ...body.metadata, namespace: ns, uid: randomBytes(8).toString('hex') } }, 'ADDED');
      return { code: 201, body: saved };
    }
    throw new HttpStatus(405, 'MethodNotAllowed', `fake: ${req.method} is not supported on ${kind}`);
  }

  private item(method: string, kind: Kind, ns: string, name: string, sub: string | undefined, body: KubeObject | undefined, type?: string): Reply {
    const cur = this.store[kind].get(`${ns}/${name}`);
    const notFound = () =>
      new HttpStatus(404, 'NotFound', `${kind === 'deployments' ? 'deployments.apps' : kind} "${name}" not found`, { name, ...(kind === 'deployments' ? { group: 'apps' } : {}), kind });
    if (!cur) throw notFound();
    if (sub === 'log') {
      if (method !== 'GET') throw new HttpStatus(405, 'MethodNotAllowed', 'fake: logs are read-only');
      return { code: 200, text: `fake log of ${name}\n` };
    }
    if (sub === 'scale') {
      if (method === 'PATCH' && !/merge-patch|strategic-merge-patch/.test(type ?? '')) {
        throw new HttpStatus(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (fake; got ${type})`);
      }
      if (method === 'PATCH' || method === 'PUT') {
        const replicas = body?.spec?.replicas;
        if (!Number.isInteger(replicas) || replicas < 0) {
          throw new HttpStatus(422, 'Invalid', `Scale.autoscaling "${name}" is invalid: spec.replicas: Invalid value: ${JSON.stringify(replicas)}: must be greater than or equal to 0`);
        }
        const saved = this.put('deployments', { ...cur, spec: { ...cur.spec, replicas } }, 'MODIFIED');
        this.reconcilePods(saved);
      }
      const d = this.store.deployments.get(`${ns}/${name}`)!;
      return {
        code: 200,
        body: { apiVersion: 'autoscaling/v1', kind: 'Scale', metadata: { name, namespace: ns, resourceVersion: d.metadata.resourceVersion }, spec: { replicas: d.spec.replicas }, status: { replicas: this.pods(ns, Object.entries(d.spec.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',')).length } },
      };
    }
    if (method === 'GET') return { code: 200, body: cur };
    if (method === 'PATCH' && kind === 'pods') {
      // Metadata only (labels, annotations), as the runtime uses it.
      if (!/merge-patch|strategic-merge-patch/.test(type ?? '')) throw new HttpStatus(415, 'UnsupportedMediaType', `fake: patch type ${type} is not supported`);
      const meta = body?.metadata ?? {};
      const saved = this.put('pods', {
        ...cur,
        metadata: { ...cur.metadata, labels: { ...cur.metadata.labels, ...(meta.labels ?? {}) }, annotations: { ...(cur.metadata.annotations ?? {}), ...(meta.annotations ?? {}) } },
      }, 'MODIFIED');
      return { code: 200, body: saved };
    }
    if (method === 'DELETE') {
      const gone = kind === 'pods' ? this.removePod(ns, name)! : this.remove(kind, ns, name)!;
      if (kind === 'deployments') this.reconcilePods({ ...gone, spec: { ...gone.spec, replicas: 0 } });
      else if (kind === 'secrets') return { code: 200, body: statusBody(200, '', '', { name, kind }) };
      else {
        // A deleted pod of a Deployment is replaced, as a ReplicaSet would.
        const owner = [...this.store.deployments.values()].find((d) => d.metadata.namespace === ns && matchesSelector(gone.metadata.labels, Object.entries(d.spec.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',')));
        if (owner) this.reconcilePods(owner);
      }
      return { code: 200, body: kind === 'pods' ? gone : statusBody(200, '', '', { name, group: 'apps', kind }) };
    }
    if ((method === 'PUT' || method === 'PATCH') && kind === 'deployments') {
      if (!body) throw new HttpStatus(400, 'BadRequest', 'fake: a JSON body is required');
      if (method === 'PUT' && body.metadata?.resourceVersion && body.metadata.resourceVersion !== cur.metadata.resourceVersion) {
        throw new HttpStatus(409, 'Conflict', `Operation cannot be fulfilled on deployments.apps "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, group: 'apps', kind });
      }
      if (method === 'PATCH' && !/merge-patch|strategic-merge-patch/.test(type ?? '')) {
        throw new HttpStatus(415, 'UnsupportedMediaType', `fake: patch type ${type} is not supported`);
      }
      const next = method === 'PUT' ? { ...body, metadata: { ...cur.metadata, ...body.metadata, namespace: ns, name } } : (strategicMerge(cur, body) as KubeObject);
      this.validate(next);
      const immutable = selectorChangeProblem(cur, next);
      if (immutable) throw this.invalid(name, [immutable]);
      const templateChanged = JSON.stringify(cur.spec.template) !== JSON.stringify(next.spec.template);
      const saved = this.put('deployments', { ...next, metadata: { ...next.metadata, generation: (cur.metadata.generation ?? 1) + (templateChanged ? 1 : 0) } }, 'MODIFIED');
      this.reconcilePods(saved);
      return { code: 200, body: saved };
    }
    throw new HttpStatus(405, 'MethodNotAllowed', `fake: ${method} is not supported on ${kind}/${name}${sub ? '/' + sub : ''}`);
  }

  private validate(d: KubeObject): void {
    const problems = [...(schemaError(d) ? [schemaError(d)!] : []), ...serverSideProblems(d)];
    if (problems.length > 0) throw this.invalid(String(d.metadata?.name), problems);
  }

  private invalid(name: string, problems: string[]): HttpStatus {
    return new HttpStatus(422, 'Invalid', `Deployment.apps "${name}" is invalid: ${problems.join(', ')}`, {
      name, group: 'apps', kind: 'Deployment', causes: problems.map((p) => ({ reason: 'FieldValueInvalid', message: p, field: p.split(':')[0] })),
    });
  }

  private watch(res: http.ServerResponse, kind: Kind, ns: string, selector: string | undefined, fromStr: string | null): undefined {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    // As the API server does: the headers go at once, events follow when they happen.
    res.flushHeaders();
    const from = fromStr ? Number(fromStr) : undefined;
    if (from !== undefined && from < this.compactedBefore[kind]) {
      // The API server's answer to a watch from a compacted version: an ERROR event, then the end.
      this.goneSent++;
      res.end(JSON.stringify({ type: 'ERROR', object: statusBody(410, 'Expired', `too old resource version: ${from} (${this.compactedBefore[kind]})`) }) + '\n');
      return undefined;
    }
    const w = { kind, ns, selector, res };
    if (from === undefined || from === 0) {
      // No version: the current objects as ADDED, then changes.
      for (const o of this.store[kind].values()) {
        if (o.metadata.namespace === ns && matchesSelector(o.metadata.labels, selector)) res.write(JSON.stringify({ type: 'ADDED', object: o }) + '\n');
      }
    } else {
      for (const e of this.history[kind]) {
        if (e.rv > from && e.object.metadata.namespace === ns && matchesSelector(e.object.metadata.labels, selector)) {
          res.write(JSON.stringify({ type: e.type, object: e.object }) + '\n');
        }
      }
    }
    this.watchers.add(w);
    res.on('close', () => this.watchers.delete(w));
    return undefined;
  }
}

async function readJson(req: http.IncomingMessage): Promise<KubeObject | undefined> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  if (chunks.length === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as KubeObject;
  } catch {
    throw new HttpStatus(400, 'BadRequest', 'fake: the body is not JSON');
  }
}

/** @kubernetes/client-node 2 needs Node >= 22.19: the suites that load it run as `describe` there, else say why and skip. */
export function kubeRuntimeSuite(): jest.Describe {
  const [major, minor] = process.versions.node.split('.').map(Number);
  const supported = major > 22 || (major === 22 && minor >= 19);
  if (!supported) console.warn(`the kubernetes runtime suite needs Node >= 22.19 (@kubernetes/client-node 2); this is ${process.version}`);
  return supported ? describe : describe.skip;
}
