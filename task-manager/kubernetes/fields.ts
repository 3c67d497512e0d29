/**
 * Validation of the per-model Kubernetes fields (KubernetesModelFields), for
 * the registry schema to call: a list of problems naming the field, empty when
 * valid. The API server would refuse these later and less clearly (422 on the
 * Deployment); here they are refused when the model is registered.
 */
import { isDns1123Subdomain, isLabelKey, isLabelValue } from './names';

const OPERATORS = new Set(['Exists', 'Equal']);
const EFFECTS = new Set(['NoSchedule', 'PreferNoSchedule', 'NoExecute']);
const TOLERATION_KEYS = new Set(['key', 'operator', 'value', 'effect', 'tolerationSeconds']);

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function kubernetesFieldProblems(entry: Record<string, unknown>): string[] {
  const out: string[] = [];
  const ns = entry.node_selector;
  if (ns !== undefined) {
    if (!isMap(ns)) out.push('node_selector: must be a map of node label → value');
    else {
      for (const [k, v] of Object.entries(ns)) {
        if (!isLabelKey(k)) out.push(`node_selector: '${k}' is not a valid label key`);
        if (typeof v !== 'string' || !isLabelValue(v)) out.push(`node_selector.${k}: '${String(v)}' is not a valid label value (≤ 63 characters, alphanumeric, '-', '_', '.')`);
      }
    }
  }
  const tol = entry.tolerations;
  if (tol !== undefined) {
    if (!Array.isArray(tol)) out.push('tolerations: must be a list');
    else {
      tol.forEach((t: unknown, i: number) => {
        const p = `tolerations[${i}]`;
        if (!isMap(t)) return void out.push(`${p}: must be a map`);
        for (const k of Object.keys(t)) if (!TOLERATION_KEYS.has(k)) out.push(`${p}: unknown field '${k}'`);
        const op = t.operator ?? 'Equal';
        if (typeof op !== 'string' || !OPERATORS.has(op)) out.push(`${p}.operator: must be Exists or Equal`);
        if (t.key !== undefined && (typeof t.key !== 'string' || !isLabelKey(t.key))) out.push(`${p}.key: '${String(t.key)}' is not a valid taint key`);
        if (t.key === undefined && op !== 'Exists') out.push(`${p}: without a key the operator must be Exists`);
        if (op === 'Exists' && t.value !== undefined && t.value !== '') out.push(`${p}.value: must be empty when operator is Exists`);
        if (t.value !== undefined && (typeof t.value !== 'string' || !isLabelValue(t.value))) out.push(`${p}.value: '${String(t.value)}' is not a valid taint value`);
        if (t.effect !== undefined && (typeof t.effect !== 'string' || !EFFECTS.has(t.effect))) out.push(`${p}.effect: must be NoSchedule, PreferNoSchedule or NoExecute`);
        if (t.tolerationSeconds !== undefined) {
          if (!Number.isInteger(t.tolerationSeconds)) out.push(`${p}.tolerationSeconds: must be an integer`);
          if (t.effect !== 'NoExecute') out.push(`${p}.tolerationSeconds: only with effect NoExecute`);
        }
      });
    }
  }
  const ips = entry.image_pull_secrets;
  if (ips !== undefined) {
    if (!Array.isArray(ips)) out.push('image_pull_secrets: must be a list of Secret names');
    else ips.forEach((s: unknown, i: number) => {
      if (typeof s !== 'string' || !isDns1123Subdomain(s)) out.push(`image_pull_secrets[${i}]: '${String(s)}' is not a valid Secret name (lowercase DNS-1123 subdomain)`);
    });
  }
  return out;
}
