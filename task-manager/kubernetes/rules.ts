/**
 * Server-side rules of the API server that the OpenAPI schemas do not carry
 * (the API server answers 422 Invalid for them). Pure: an object in, the list
 * of problems out ("path: why"); empty when valid. Used by the tests on every
 * manifest and by the fake API server.
 */
import { isDns1035Label, isDns1123Label, isDns1123Subdomain, isLabelKey, isLabelValue } from './names';

type Obj = Record<string, unknown>;

const NAME_RULE: Record<string, [(s: string) => boolean, string]> = {
  Service: [isDns1035Label, 'a DNS-1035 label'],
  Namespace: [isDns1123Label, 'a DNS-1123 label'],
};
const SUBDOMAIN: [(s: string) => boolean, string] = [isDns1123Subdomain, 'a DNS-1123 subdomain'];

/** Native resources; anything else with a domain prefix (nvidia.com/gpu) is an extended resource. */
function isExtendedResource(name: string): boolean {
  return name.includes('/') && !name.startsWith('kubernetes.io/') && !name.startsWith('requests.');
}

function obj(v: unknown): Obj | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : undefined;
}

function checkLabels(path: string, labels: unknown, out: string[]): void {
  for (const [k, v] of Object.entries(obj(labels) ?? {})) {
    if (!isLabelKey(k)) out.push(`${path}: label key '${k}' is not a valid qualified name (≤ 63 characters, alphanumeric, '-', '_', '.')`);
    if (typeof v !== 'string' || !isLabelValue(v)) {
      out.push(`${path}[${k}]: label value '${String(v)}' must be ≤ 63 characters, alphanumeric, '-', '_' or '.', starting and ending alphanumeric`);
    }
  }
}

function checkAnnotationKeys(path: string, annotations: unknown, out: string[]): void {
  for (const k of Object.keys(obj(annotations) ?? {})) {
    if (!isLabelKey(k)) out.push(`${path}: annotation key '${k}' is not a valid qualified name`);
  }
}

function checkMeta(path: string, kind: string, meta: unknown, out: string[], named = true): void {
  const m = obj(meta) ?? {};
  if (named) {
    const [ok, what] = NAME_RULE[kind] ?? SUBDOMAIN;
    if (typeof m.name !== 'string' || !ok(m.name)) out.push(`${path}.name: '${String(m.name)}' must be ${what}`);
  }
  checkLabels(`${path}.labels`, m.labels, out);
  checkAnnotationKeys(`${path}.annotations`, m.annotations, out);
}

function checkContainers(path: string, containers: unknown, out: string[]): void {
  if (!Array.isArray(containers)) return;
  containers.forEach((c: unknown, i: number) => {
    const cont = obj(c) ?? {};
    const p = `${path}[${i}]`;
    if (typeof cont.name !== 'string' || !isDns1123Label(cont.name)) out.push(`${p}.name: '${String(cont.name)}' must be a DNS-1123 label`);
    const res = obj(cont.resources) ?? {};
    const requests = obj(res.requests) ?? {};
    const limits = obj(res.limits) ?? {};
    for (const name of new Set([...Object.keys(requests), ...Object.keys(limits)])) {
      if (!isExtendedResource(name)) continue;
      const req = requests[name];
      const lim = limits[name];
      for (const [which, q] of [['requests', req], ['limits', lim]] as const) {
        if (q !== undefined && !/^[0-9]+$/.test(String(q))) out.push(`${p}.resources.${which}[${name}]: must be a whole number, got '${String(q)}'`);
      }
      if (lim === undefined) out.push(`${p}.resources.limits[${name}]: an extended resource needs a limit`);
      else if (req !== undefined && String(req) !== String(lim)) {
        out.push(`${p}.resources.requests[${name}]: must be equal to ${name} limit (${String(lim)}), got ${String(req)}`);
      }
    }
  });
}

/** Problems of one object (any kind); the kind-specific rules for Deployments and pod templates. */
export function serverSideProblems(o: unknown): string[] {
  const out: string[] = [];
  const root = obj(o) ?? {};
  const kind = String(root.kind);
  checkMeta('metadata', kind, root.metadata, out);
  if (kind === 'Deployment' || kind === 'StatefulSet' || kind === 'DaemonSet' || kind === 'ReplicaSet') {
    const spec = obj(root.spec) ?? {};
    const template = obj(spec.template) ?? {};
    const tmeta = obj(template.metadata) ?? {};
    checkMeta('spec.template.metadata', kind, tmeta, out, false);
    const match = obj(obj(spec.selector)?.matchLabels) ?? {};
    const tlabels = obj(tmeta.labels) ?? {};
    if (Object.keys(match).length === 0) out.push('spec.selector: empty selector is invalid for a workload');
    checkLabels('spec.selector.matchLabels', match, out);
    for (const [k, v] of Object.entries(match)) {
      if (tlabels[k] !== v) out.push(`spec.template.metadata.labels: selector does not match template labels (${k}=${String(v)})`);
    }
    const pod = obj(template.spec) ?? {};
    checkContainers('spec.template.spec.containers', pod.containers, out);
    checkContainers('spec.template.spec.initContainers', pod.initContainers, out);
  }
  if (kind === 'Service') {
    checkLabels('spec.selector', obj(root.spec)?.selector, out);
  }
  return out;
}

/** The API server refuses to change a Deployment's selector (apps/v1): field is immutable. */
export function selectorChangeProblem(before: unknown, after: unknown): string | undefined {
  const sel = (d: unknown) => JSON.stringify(sortKeys(obj(obj(obj(obj(d)?.spec)?.selector)?.matchLabels) ?? {}));
  return sel(before) === sel(after) ? undefined : 'spec.selector: field is immutable';
}

function sortKeys(o: Obj): Obj {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}
