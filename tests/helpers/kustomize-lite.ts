/**
 * Renders the kustomizations in deploy/kubernetes the way `kubectl apply -k`
 * would, for the tests (kubectl is not installable here). It supports only the
 * kustomize fields those files use and throws on any other, so a new field
 * can never be silently ignored by the tests. Not a kustomize replacement:
 * ConfigMap names get no content-hash suffix.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';

export type KubeObject = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SUPPORTED = new Set(['apiVersion', 'kind', 'namespace', 'labels', 'resources', 'configMapGenerator', 'images', 'patches']);

/** Every YAML document of a file (throws on a syntax error). */
export function readYamlDocs(file: string): KubeObject[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { uniqueKeys: true });
  const list = Array.isArray(docs) ? docs : [docs];
  return list.map((d) => {
    if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0].message}`);
    return d.toJS() as KubeObject;
  }).filter((o) => o !== null);
}

function isMap(v: unknown): v is KubeObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Strategic merge as kustomize does it for the lists we patch: items with a `name` merge by name. */
export function strategicMerge(base: unknown, patch: unknown): unknown {
  if (isMap(base) && isMap(patch)) {
    const out: KubeObject = { ...base };
    for (const [k, v] of Object.entries(patch)) out[k] = k in base ? strategicMerge(base[k], v) : v;
    return out;
  }
  if (Array.isArray(base) && Array.isArray(patch) && [...base, ...patch].every((i) => isMap(i) && typeof i.name === 'string')) {
    const out = base.map((i) => ({ ...i }));
    for (const p of patch as KubeObject[]) {
      const at = out.findIndex((i) => i.name === p.name);
      if (at >= 0) out[at] = strategicMerge(out[at], p) as KubeObject;
      else out.push(p);
    }
    return out;
  }
  return patch;
}

function podSpecs(o: KubeObject): KubeObject[] {
  return o.spec?.template?.spec ? [o.spec.template.spec] : [];
}

export function renderKustomization(dir: string): KubeObject[] {
  const k = readYamlDocs(path.join(dir, 'kustomization.yaml'))[0];
  for (const key of Object.keys(k)) if (!SUPPORTED.has(key)) throw new Error(`${dir}: kustomize field '${key}' is not supported by kustomize-lite`);
  let objects: KubeObject[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const p = path.resolve(dir, r);
    objects.push(...(statSync(p).isDirectory() ? renderKustomization(p) : readYamlDocs(p)));
  }
  for (const g of (k.configMapGenerator ?? []) as KubeObject[]) {
    const data: Record<string, string> = {};
    for (const f of g.files as string[]) data[path.basename(f)] = readFileSync(path.resolve(dir, f), 'utf8');
    const cm = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: g.name }, data };
    const at = objects.findIndex((o) => o.kind === 'ConfigMap' && o.metadata?.name === g.name);
    if (g.behavior === 'replace' || g.behavior === 'merge') {
      if (at < 0) throw new Error(`${dir}: configMapGenerator ${g.name} ${g.behavior}s a ConfigMap that is not in the base`);
      objects[at] = g.behavior === 'replace' ? { ...cm, metadata: objects[at].metadata } : (strategicMerge(objects[at], cm) as KubeObject);
    } else {
      if (at >= 0) throw new Error(`${dir}: ConfigMap ${g.name} generated twice`);
      objects.push(cm);
    }
  }
  for (const p of (k.patches ?? []) as KubeObject[]) {
    const patch = readYamlDocs(path.resolve(dir, p.path))[0];
    const t = p.target ?? { kind: patch.kind, name: patch.metadata?.name };
    const hits = objects.filter((o) => o.kind === t.kind && o.metadata?.name === t.name);
    if (hits.length !== 1) throw new Error(`${dir}: patch ${p.path} matches ${hits.length} objects (want 1)`);
    objects = objects.map((o) => (o === hits[0] ? (strategicMerge(o, patch) as KubeObject) : o));
  }
  for (const img of (k.images ?? []) as KubeObject[]) {
    let used = false;
    for (const o of objects) {
      for (const spec of podSpecs(o)) {
        for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
          if (c.image === img.name || String(c.image).startsWith(`${img.name}:`)) {
            c.image = `${img.newName ?? img.name}:${img.newTag ?? 'latest'}`;
            used = true;
          }
        }
      }
    }
    if (!used) throw new Error(`${dir}: images entry ${img.name} matches no container`);
  }
  for (const l of (k.labels ?? []) as KubeObject[]) {
    if (l.includeSelectors || l.includeTemplates) throw new Error(`${dir}: labels with includeSelectors/includeTemplates are not supported`);
    for (const o of objects) o.metadata = { ...o.metadata, labels: { ...(o.metadata?.labels ?? {}), ...l.pairs } };
  }
  if (k.namespace) {
    for (const o of objects) {
      if (o.kind !== 'Namespace') o.metadata = { ...o.metadata, namespace: k.namespace };
      for (const s of o.kind === 'RoleBinding' ? (o.subjects ?? []) : []) if (s.kind === 'ServiceAccount') s.namespace = k.namespace;
    }
  }
  return objects;
}
