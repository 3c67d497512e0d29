/**
 * deploy/kubernetes and the model Deployments the runtime will create, checked
 * as the API server would: the OpenAPI schemas (kubernetes-models) and the
 * server-side rules the schemas miss (task-manager/kubernetes/rules.ts).
 * No API server runs here; kustomize-lite renders the kustomizations.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { SPEC_DEFAULTS } from '../../core/model-spec';
import { parseModelsFile } from '../../model-manager/models-file';
import { validateEntry } from '../../model-manager/schema';
import { fingerprint } from '../../task-manager/model-state';
import {
  buildModelDeployment, deploymentName, linkServiceName, selectorLabels, LABELS, type DeploymentInput, type KubeModelSpec,
} from '../../task-manager/kubernetes/manifests';
import {
  isDns1035Label, isDns1123Label, isDns1123Subdomain, isLabelKey, isLabelValue, labelValue,
} from '../../task-manager/kubernetes/names';
import { selectorChangeProblem, serverSideProblems } from '../../task-manager/kubernetes/rules';
import { kubernetesFieldProblems } from '../../task-manager/kubernetes/fields';
import { readYamlDocs, renderKustomization, type KubeObject } from '../helpers/kustomize-lite';

const ROOT = path.join(__dirname, '..', '..', 'deploy', 'kubernetes');
const GPU = path.join(ROOT, 'overlays', 'gpu');

/** The kubernetes-models class of an object, by apiVersion and kind; validate() throws on a schema error. */
function schemaErrors(o: KubeObject): string | undefined {
  const [group, version] = String(o.apiVersion).includes('/') ? String(o.apiVersion).split('/') : ['', o.apiVersion];
  const dir = group ? `${group}/${version}` : version;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(`kubernetes-models/${dir}/${o.kind}`) as Record<string, new (d: unknown) => { validate(): void }>;
  try {
    new mod[o.kind](o).validate();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return f.endsWith('.yaml') ? [p] : [];
  });
}

function spec(over: Partial<KubeModelSpec> = {}): KubeModelSpec {
  return { ...SPEC_DEFAULTS, name: 'detector', image: 'registry.example/det:1', env: {}, source: 'file', ...over } as KubeModelSpec;
}

function input(over: Partial<KubeModelSpec> = {}, rest: Partial<DeploymentInput> = {}): DeploymentInput {
  const s = spec(over);
  return {
    spec: s, brokerId: 'tensorbroker-7d9f8-abcde', fingerprint: fingerprint(s), linkEndpoint: 'tcp://10.0.0.7:7788',
    curvePublicKey: 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7', heartbeatMs: 1000, replicas: 2, namespace: 'tensorbroker', ...rest,
  };
}

const byKind = (objs: KubeObject[], kind: string, name?: string): KubeObject[] =>
  objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));

const BASE = renderKustomization(ROOT);
const GPU_OBJECTS = renderKustomization(GPU);

describe('deploy/kubernetes manifests', () => {
  test('every YAML file parses', () => {
    const files = yamlFiles(ROOT);
    expect(files.length).toBeGreaterThan(10);
    for (const f of files) expect(() => readYamlDocs(f)).not.toThrow();
  });

  test.each([['base', BASE], ['overlays/gpu', GPU_OBJECTS]])('%s: every object passes the OpenAPI schema and the server-side rules', (_n, objs) => {
    expect(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'ConfigMap/tensorbroker-models', 'Deployment/redis', 'Deployment/tensorbroker', 'Namespace/tensorbroker',
      'Role/tensorbroker', 'RoleBinding/tensorbroker', 'Secret/tensorbroker-curve', 'Service/redis', 'Service/tensorbroker',
      'ServiceAccount/tensorbroker',
    ]);
    for (const o of objs) {
      expect([`${o.kind}/${o.metadata.name}`, schemaErrors(o)]).toEqual([`${o.kind}/${o.metadata.name}`, undefined]);
      expect([`${o.kind}/${o.metadata.name}`, serverSideProblems(o)]).toEqual([`${o.kind}/${o.metadata.name}`, []]);
      if (o.kind !== 'Namespace') expect(o.metadata.namespace).toBe('tensorbroker');
    }
  });

  test.each([['base', BASE], ['overlays/gpu', GPU_OBJECTS]])('%s: pods are non-root, no escalation, no capabilities, read-only root with an emptyDir scratch', (_n, objs) => {
    for (const d of byKind(objs, 'Deployment')) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
      expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
      for (const c of pod.containers) {
        expect(c.securityContext).toEqual({
          allowPrivilegeEscalation: false, privileged: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] },
        });
        const emptyDirs = new Set(pod.volumes.filter((v: KubeObject) => v.emptyDir).map((v: KubeObject) => v.name));
        expect(c.volumeMounts.some((m: KubeObject) => emptyDirs.has(m.name))).toBe(true);
      }
    }
  });

  test('the broker: several replicas, the Service selects them and its ports exist, Prometheus annotations point at the metrics port', () => {
    const [broker] = byKind(BASE, 'Deployment', 'tensorbroker');
    expect(broker.spec.replicas).toBeGreaterThanOrEqual(2);
    const tpl = broker.spec.template;
    const [svc] = byKind(BASE, 'Service', 'tensorbroker');
    for (const [k, v] of Object.entries(svc.spec.selector)) expect(tpl.metadata.labels[k]).toBe(v);
    const ports = tpl.spec.containers[0].ports as KubeObject[];
    for (const p of svc.spec.ports) expect(ports.map((x) => x.name)).toContain(p.targetPort);
    expect(tpl.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '8002', 'prometheus.io/path': '/metrics' });
    expect(ports.find((p) => p.name === 'metrics')?.containerPort).toBe(8002);
    const env = Object.fromEntries((tpl.spec.containers[0].env as KubeObject[]).map((e) => [e.name, e.value ?? e.valueFrom]));
    expect(env.TB_REDIS_URL).toBe('redis://redis:6379');
    expect(env.TB_BROKER_ID).toEqual({ fieldRef: { fieldPath: 'metadata.name' } });
    expect(tpl.spec.containers[0].image).toBe('tensorbroker/broker:0.1.0');
    // Redis is reached by the Service named in TB_REDIS_URL.
    expect(byKind(BASE, 'Service', 'redis')[0].spec.ports[0].port).toBe(6379);
  });

  test('the models.yaml ConfigMap is mounted where TB_MODELS points, and each models.yaml is a valid registry seed', () => {
    for (const objs of [BASE, GPU_OBJECTS]) {
      const [broker] = byKind(objs, 'Deployment', 'tensorbroker');
      const c = broker.spec.template.spec.containers[0];
      const vol = broker.spec.template.spec.volumes.find((v: KubeObject) => v.configMap?.name === 'tensorbroker-models');
      const mount = c.volumeMounts.find((m: KubeObject) => m.name === vol.name);
      const tbModels = c.env.find((e: KubeObject) => e.name === 'TB_MODELS').value;
      expect(path.posix.dirname(tbModels)).toBe(mount.mountPath);
      const [cm] = byKind(objs, 'ConfigMap', 'tensorbroker-models');
      const parsed = parseModelsFile(cm.data[path.posix.basename(tbModels)], tbModels);
      expect(parsed.errors).toEqual([]);
      expect(parsed.specs.length).toBeGreaterThan(0);
    }
    const gpuSpecs = parseModelsFile(byKind(GPU_OBJECTS, 'ConfigMap')[0].data['models.yaml'], '/etc/tensorbroker/models.yaml').specs;
    expect(gpuSpecs.some((s) => s.run_on_gpu)).toBe(true);
  });

  test('RBAC: a namespaced Role with exactly the rules the README lists, bound to the broker ServiceAccount', () => {
    const [role] = byKind(BASE, 'Role');
    const rules = (role.rules as KubeObject[]).flatMap((r) =>
      (r.resources as string[]).map((res) => `${r.apiGroups[0] || 'core'} ${res}: ${[...r.verbs].sort().join(',')}`));
    expect(rules.sort()).toEqual([
      'apps deployments/scale: get,patch',
      'apps deployments: create,delete,get,list,update',
      'core pods: delete,list,patch,watch',
      'core secrets: create,delete,get',
    ]);
    expect(JSON.stringify(role.rules)).not.toContain('*');
    // The README's table lists each rule with its verbs.
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    for (const r of role.rules as KubeObject[]) {
      for (const res of r.resources) expect(readme).toMatch(new RegExp(`\\| \`${res.replace('/', '\\/')}\` \\([^)]*\\) \\| ${[...r.verbs].join(', ')} \\|`));
    }
    const [rb] = byKind(BASE, 'RoleBinding');
    expect(rb.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    const [sa] = byKind(BASE, 'ServiceAccount');
    expect(rb.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: 'tensorbroker' }]);
    expect(byKind(BASE, 'Deployment', 'tensorbroker')[0].spec.template.spec.serviceAccountName).toBe(sa.metadata.name);
    // Redis and the copies never call the API server.
    expect(byKind(BASE, 'Deployment', 'redis')[0].spec.template.spec.automountServiceAccountToken).toBe(false);
  });

  test('the CURVE Secret holds placeholders that the README says how to replace', () => {
    const [secret] = byKind(BASE, 'Secret', 'tensorbroker-curve');
    expect(Object.keys(secret.stringData).sort()).toEqual(['TB_CURVE_PUBLIC_KEY', 'TB_CURVE_SECRET_KEY']);
    for (const v of Object.values(secret.stringData)) expect(String(v)).toMatch(/^REPLACE-ME/);
    expect(readFileSync(path.join(ROOT, 'curve-secret.yaml'), 'utf8')).toContain('curveKeyPair');
  });

  test('the GPU overlay: each GPU copy is a pod on the GPU pool asking for whole GPUs with requests equal to limits; the brokers stay on CPU nodes', () => {
    const specs = parseModelsFile(byKind(GPU_OBJECTS, 'ConfigMap', 'tensorbroker-models')[0].data['models.yaml'], '/etc/tensorbroker/models.yaml').specs;
    const gpu = specs.find((s) => s.run_on_gpu)!;
    const d = buildModelDeployment(input(gpu));
    expect(schemaErrors(d as unknown as KubeObject)).toBeUndefined();
    expect(serverSideProblems(d)).toEqual([]);
    const pod = d.spec.template.spec as KubeObject;
    expect(pod.nodeSelector).toEqual({ 'nvidia.com/gpu.present': 'true' });
    expect(pod.tolerations).toEqual([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
    expect(pod.containers[0].resources.limits['nvidia.com/gpu']).toBe('1');
    expect(pod.containers[0].resources.requests['nvidia.com/gpu']).toBe('1');
    const broker = byKind(GPU_OBJECTS, 'Deployment', 'tensorbroker')[0].spec.template.spec;
    expect(broker.nodeSelector).toBeUndefined();
    expect(broker.containers[0].resources.limits['nvidia.com/gpu']).toBeUndefined();
  });

  test('the broker runs the kubernetes runtime: the link on the pod IP, the CURVE keys from the Secret', () => {
    const c = byKind(BASE, 'Deployment', 'tensorbroker')[0].spec.template.spec.containers[0];
    const env = c.env as KubeObject[];
    const names = env.map((e) => e.name);
    const value = (n: string) => env.find((e) => e.name === n)?.value;
    expect(value('TB_RUNTIME')).toBe('kubernetes');
    expect(value('TB_LINK_ADVERTISE')).toBe(`tcp://$(TB_POD_IP):${value('TB_LINK_PORT')}`);
    // $(VAR) expands only variables defined earlier in the list.
    expect(names.indexOf('TB_POD_IP')).toBeLessThan(names.indexOf('TB_LINK_ADVERTISE'));
    expect(c.ports.find((p: KubeObject) => p.name === 'link').containerPort).toBe(Number(value('TB_LINK_PORT')));
    for (const k of ['TB_CURVE_PUBLIC_KEY', 'TB_CURVE_SECRET_KEY']) expect(env.find((e) => e.name === k)!.valueFrom.secretKeyRef).toEqual({ name: 'tensorbroker-curve', key: k });
  });
});

describe('names and labels', () => {
  test('the rules accept and refuse what the API server does', () => {
    expect(isDns1123Subdomain('tb-simple.v1')).toBe(true);
    expect(isDns1123Subdomain('TB')).toBe(false);
    expect(isDns1123Subdomain('a'.repeat(254))).toBe(false);
    expect(isDns1123Label('a.b')).toBe(false);
    expect(isDns1035Label('1abc')).toBe(false);
    expect(isDns1035Label('abc-1')).toBe(true);
    expect(isDns1035Label('abc-')).toBe(false);
    expect(isLabelValue('')).toBe(true);
    expect(isLabelValue('v1.2_x-Y')).toBe(true);
    expect(isLabelValue('-x')).toBe(false);
    expect(isLabelValue('a'.repeat(64))).toBe(false);
    expect(isLabelKey('tensorbroker.io/model')).toBe(true);
    expect(isLabelKey('Bad_Prefix/x')).toBe(false);
    expect(isLabelKey('x/' + 'a'.repeat(64))).toBe(false);
  });

  test.each(['simple', 'Text_Detector.v2', '9lives', 'a'.repeat(128), '-x_', 'x'.repeat(60) + '.y', 'ÉtéModel'])(
    'a model named %j gets valid, distinct names and labels', (name) => {
      const dn = deploymentName(name, 'broker-1');
      expect(isDns1123Subdomain(dn)).toBe(true);
      expect(isDns1035Label(dn)).toBe(true);
      expect(dn.length).toBeLessThanOrEqual(46);
      expect(deploymentName(name, 'broker-2')).not.toBe(dn);
      expect(deploymentName(name + 'x', 'broker-1')).not.toBe(dn);
      expect(isLabelValue(labelValue(name))).toBe(true);
      expect(isDns1035Label(linkServiceName(name))).toBe(true);
    });

  test('labelValue keeps valid values and never maps two values to one label', () => {
    expect(labelValue('v1')).toBe('v1');
    const long = 'a'.repeat(70);
    expect(labelValue(long)).not.toBe(labelValue(long + 'b'));
    expect(labelValue('a b')).not.toBe(labelValue('a_b'));
  });
});

describe('the model Deployment (task-manager/kubernetes/manifests.ts)', () => {
  const cases: [string, Partial<KubeModelSpec>][] = [
    ['a CPU model with defaults', {}],
    ['a GPU model with limits, selectors, tolerations and pull secrets', {
      run_on_gpu: true, gpus_per_copy: 2, memory_mb: 6144, cpus: 2.5, pull_policy: 'always',
      node_selector: { 'cloud.google.com/gke-accelerator': 'nvidia-l4' },
      tolerations: [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }],
      image_pull_secrets: ['regcred'],
    }],
    ['an awkward name and version', { name: 'Text_Detector.v2-' + 'x'.repeat(100), version: '2026-11-28 build #7' }],
    ['a writable root', { read_only_root: false }],
  ];

  test.each(cases)('%s passes the OpenAPI schema and the server-side rules', (_n, over) => {
    const d = buildModelDeployment(input(over));
    expect(schemaErrors(d as unknown as KubeObject)).toBeUndefined();
    expect(serverSideProblems(d)).toEqual([]);
  });

  test('labels name the model, version, owner and fingerprint; annotations keep the exact values', () => {
    const i = input({ name: 'Text Detector', version: 'v' + '9'.repeat(80) });
    const d = buildModelDeployment(i);
    const labels = d.spec.template.metadata.labels;
    expect(labels[LABELS.model]).toBe(labelValue('Text Detector'));
    expect(labels[LABELS.version]).toBe(labelValue(i.spec.version));
    expect(labels[LABELS.owner]).toBe(i.brokerId);
    expect(labels[LABELS.fingerprint]).toBe(i.fingerprint);
    expect(d.metadata.labels).toEqual(labels);
    expect(d.spec.template.metadata.annotations['tensorbroker.io/model-version']).toBe(i.spec.version);
    expect(d.spec.template.metadata.annotations['tensorbroker.io/model-name']).toBe('Text Detector');
  });

  test('run_on_gpu: nvidia.com/gpu = gpus_per_copy with requests equal to limits; memory and CPU guaranteed', () => {
    const d = buildModelDeployment(input({ run_on_gpu: true, gpus_per_copy: 2, memory_mb: 6144, cpus: 2.5 }));
    const c = (d.spec.template.spec.containers as KubeObject[])[0];
    expect(c.resources.limits).toEqual({ 'nvidia.com/gpu': '2', memory: '6144Mi', cpu: '2500m' });
    expect(c.resources.requests).toEqual(c.resources.limits);
    // No spare GPU is assumed during a roll.
    expect(d.spec.strategy.rollingUpdate).toEqual({ maxSurge: 0, maxUnavailable: 1 });
    const cpu = (buildModelDeployment(input()).spec.template.spec.containers as KubeObject[])[0];
    expect(cpu.resources).toEqual({});
  });

  test('security context, scratch, pull policy, selectors, tolerations, pull secrets map from the spec', () => {
    const d = buildModelDeployment(input({
      tmpfs_mb: 128, pull_policy: 'never', node_selector: { pool: 'gpu' },
      tolerations: [{ key: 'gpu', operator: 'Equal', value: 'yes', effect: 'NoSchedule' }], image_pull_secrets: ['a', 'b'],
    }));
    const pod = d.spec.template.spec as KubeObject;
    expect(pod.securityContext).toEqual({ runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod.automountServiceAccountToken).toBe(false);
    const c = pod.containers[0];
    expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, privileged: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(c.volumeMounts).toEqual([{ name: 'scratch', mountPath: '/tmp' }]);
    expect(pod.volumes).toEqual([{ name: 'scratch', emptyDir: { medium: 'Memory', sizeLimit: '128Mi' } }]);
    expect(c.imagePullPolicy).toBe('Never');
    expect(pod.nodeSelector).toEqual({ pool: 'gpu' });
    expect(pod.tolerations).toEqual([{ key: 'gpu', operator: 'Equal', value: 'yes', effect: 'NoSchedule' }]);
    expect(pod.imagePullSecrets).toEqual([{ name: 'a' }, { name: 'b' }]);
  });

  test('env: the spec env, then the link env which wins; the copy id is the pod name', () => {
    const d = buildModelDeployment(input({ env: { THREADS: '4', TB_ENDPOINT: 'tcp://evil:1', TB_COPY_ID: 'x' }, batch_size: 8 }));
    const env = (d.spec.template.spec.containers as KubeObject[])[0].env as KubeObject[];
    const names = env.map((e) => e.name);
    expect(new Set(names).size).toBe(names.length);
    const val = Object.fromEntries(env.map((e) => [e.name, e.value ?? e.valueFrom]));
    expect(val).toMatchObject({
      THREADS: '4', TB_ENDPOINT: 'tcp://10.0.0.7:7788', TB_MODEL: 'detector', TB_BATCH_SIZE: '8', TB_HEARTBEAT_MS: '1000',
      TB_CURVE_SERVER_KEY: 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7', TB_COPY_ID: { fieldRef: { fieldPath: 'metadata.name' } },
    });
  });

  test('the selector matches the template labels and never changes across spec changes', () => {
    const before = buildModelDeployment(input());
    const after = buildModelDeployment(input({ image: 'registry.example/det:2', version: '2', run_on_gpu: true, memory_mb: 512, env: { A: '1' } }, { replicas: 5 }));
    expect(after.metadata.name).toBe(before.metadata.name);
    expect(after.spec.selector).toEqual(before.spec.selector);
    expect(selectorChangeProblem(before, after)).toBeUndefined();
    expect(after.spec.template.metadata.labels[LABELS.fingerprint]).not.toBe(before.spec.template.metadata.labels[LABELS.fingerprint]);
    expect(before.spec.selector.matchLabels).toEqual(selectorLabels('detector', 'tensorbroker-7d9f8-abcde'));
    // Another broker's Deployment of the same model selects other pods.
    const other = buildModelDeployment(input({}, { brokerId: 'tensorbroker-7d9f8-zzzzz' }));
    expect(selectorChangeProblem(before, other)).toBe('spec.selector: field is immutable');
  });

  test('bad input is refused with a clear message', () => {
    expect(() => buildModelDeployment(input({ image: undefined }))).toThrow("model 'detector' has no image");
    expect(() => buildModelDeployment(input({}, { replicas: -1 }))).toThrow('replicas must be an integer');
  });
});

describe('the server-side rules catch what the API server refuses', () => {
  const good = () => JSON.parse(JSON.stringify(buildModelDeployment(input({ run_on_gpu: true, gpus_per_copy: 1 })))) as KubeObject;

  test.each<[string, (d: KubeObject) => void, RegExp]>([
    ['a GPU request different from its limit', (d) => { d.spec.template.spec.containers[0].resources.requests['nvidia.com/gpu'] = '2'; }, /must be equal to nvidia.com\/gpu limit/],
    ['a fractional GPU', (d) => { const r = d.spec.template.spec.containers[0].resources; r.requests['nvidia.com/gpu'] = r.limits['nvidia.com/gpu'] = '0.5'; }, /whole number/],
    ['a GPU request without a limit', (d) => { delete d.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']; }, /needs a limit/],
    ['a label value over 63 characters', (d) => { d.metadata.labels.x = 'a'.repeat(64); }, /label value/],
    ['a label key with a bad prefix', (d) => { d.spec.template.metadata.labels['Bad_Prefix/x'] = 'y'; }, /label key/],
    ['an uppercase Deployment name', (d) => { d.metadata.name = 'TB-x'; }, /DNS-1123 subdomain/],
    ['a selector the template does not match', (d) => { d.spec.selector.matchLabels.extra = 'x'; }, /selector does not match template labels/],
  ])('%s', (_n, spoil, why) => {
    const d = good();
    expect(serverSideProblems(d)).toEqual([]);
    spoil(d);
    expect(serverSideProblems(d).join('\n')).toMatch(why);
  });

  test('a Service name must be a DNS-1035 label', () => {
    const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: '7-brokers' }, spec: { ports: [{ port: 80 }] } };
    expect(schemaErrors(svc)).toBeUndefined();
    expect(serverSideProblems(svc)).toEqual(["metadata.name: '7-brokers' must be a DNS-1035 label"]);
  });

  test('the OpenAPI schema check itself refuses a wrong type', () => {
    const d = good();
    d.spec.template.spec.containers[0].securityContext.capabilities.drop = 'ALL';
    expect(schemaErrors(d)).toMatch(/capabilities\/drop must be array/);
  });
});

describe('the per-model Kubernetes fields (task-manager/kubernetes/fields.ts)', () => {
  const good = {
    node_selector: { 'cloud.google.com/gke-accelerator': 'nvidia-l4', pool: 'gpu' },
    tolerations: [
      { key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' },
      { key: 'zone', operator: 'Equal', value: 'a', effect: 'NoExecute', tolerationSeconds: 30 },
      { operator: 'Exists' },
    ],
    image_pull_secrets: ['regcred', 'ghcr.io-pull'],
  } as const;

  test('valid fields pass, and the Deployment built from them passes the schema and the rules', () => {
    expect(kubernetesFieldProblems(good as unknown as Record<string, unknown>)).toEqual([]);
    const d = buildModelDeployment(input(good as unknown as Partial<KubeModelSpec>));
    expect(schemaErrors(d as unknown as KubeObject)).toBeUndefined();
    expect(serverSideProblems(d)).toEqual([]);
    expect(kubernetesFieldProblems({})).toEqual([]);
  });

  test.each<[string, Record<string, unknown>, RegExp]>([
    ['a node_selector that is a list', { node_selector: ['gpu'] }, /node_selector: must be a map/],
    ['a node label value too long', { node_selector: { pool: 'x'.repeat(64) } }, /node_selector.pool: .* not a valid label value/],
    ['a node label key with a bad prefix', { node_selector: { 'Bad_Domain/x': 'y' } }, /not a valid label key/],
    ['an unknown toleration operator', { tolerations: [{ key: 'a', operator: 'In' }] }, /operator: must be Exists or Equal/],
    ['a toleration without key that is not Exists', { tolerations: [{ value: 'x' }] }, /without a key the operator must be Exists/],
    ['Exists with a value', { tolerations: [{ key: 'a', operator: 'Exists', value: 'x' }] }, /must be empty when operator is Exists/],
    ['an unknown effect', { tolerations: [{ key: 'a', effect: 'NoRun' }] }, /effect: must be NoSchedule/],
    ['tolerationSeconds without NoExecute', { tolerations: [{ key: 'a', effect: 'NoSchedule', tolerationSeconds: 5 }] }, /only with effect NoExecute/],
    ['a misspelt toleration field', { tolerations: [{ key: 'a', efect: 'NoSchedule' }] }, /unknown field 'efect'/],
    ['an uppercase pull Secret', { image_pull_secrets: ['RegCred'] }, /image_pull_secrets\[0\]: 'RegCred' is not a valid Secret name/],
    ['a pull Secret string instead of a list', { image_pull_secrets: 'regcred' }, /must be a list/],
  ])('%s is refused', (_n, entry, why) => {
    expect(kubernetesFieldProblems(entry).join('\n')).toMatch(why);
  });

  test('models.yaml (the registry schema) accepts the fields, and they reach the Deployment', () => {
    const r = validateEntry('detector', { image: 'det:1', ...good }, { allowCommand: false });
    expect(r.errors).toBeUndefined();
    const d = buildModelDeployment(input(r.spec!));
    const pod = d.spec.template.spec as Record<string, unknown>;
    expect(pod.nodeSelector).toEqual(good.node_selector);
    expect(pod.tolerations).toEqual(good.tolerations);
    expect(pod.imagePullSecrets).toEqual([{ name: 'regcred' }, { name: 'ghcr.io-pull' }]);
    // A placement change is a new copy: it rolls.
    const plain = validateEntry('detector', { image: 'det:1' }, { allowCommand: false }).spec!;
    expect(fingerprint(r.spec!)).not.toBe(fingerprint(plain));
  });

  test.each<[string, Record<string, unknown>, RegExp]>([
    ['a wrong shape', { node_selector: 'gpu' }, /field "node_selector" must be a map of node label: value/],
    ['a misspelt toleration field', { tolerations: [{ key: 'a', efect: 'NoSchedule' }] }, /field "tolerations" must be a list of tolerations/],
    ['a bad label value', { node_selector: { pool: 'a b' } }, /model "detector": field node_selector.pool: 'a b' is not a valid label value/],
    ['tolerationSeconds without NoExecute', { tolerations: [{ key: 'a', effect: 'NoSchedule', tolerationSeconds: 5 }] }, /tolerations\[0\].tolerationSeconds: only with effect NoExecute/],
    ['an uppercase pull Secret', { image_pull_secrets: ['RegCred'] }, /image_pull_secrets\[0\]: 'RegCred' is not a valid Secret name/],
  ])('models.yaml refuses %s, naming the model and field', (_n, entry, why) => {
    const r = validateEntry('detector', { image: 'det:1', ...entry }, { allowCommand: false });
    expect((r.errors ?? []).join('\n')).toMatch(why);
  });
});
