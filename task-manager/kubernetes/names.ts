/**
 * Kubernetes names and labels, and the API server's rules for them (which the
 * OpenAPI schemas do not express). Pure functions: the manifest builder uses
 * them to make valid names from any model name, the tests and the fake API
 * server use them to refuse what a real API server refuses (422).
 */
import { createHash } from 'node:crypto';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

/** RFC 1123 label: Namespaces, most names that become DNS labels. */
export function isDns1123Label(s: string): boolean {
  return s.length <= 63 && DNS1123_LABEL.test(s);
}

/** RFC 1123 subdomain: Deployment, ConfigMap, Secret names. */
export function isDns1123Subdomain(s: string): boolean {
  return s.length > 0 && s.length <= 253 && s.split('.').every((part) => DNS1123_LABEL.test(part));
}

/** RFC 1035 label: Service names (they become DNS names that must not start with a digit). */
export function isDns1035Label(s: string): boolean {
  return s.length <= 63 && DNS1035_LABEL.test(s);
}

/** A label value: empty, or ≤ 63 characters of [A-Za-z0-9-_.] starting and ending alphanumeric. */
export function isLabelValue(s: string): boolean {
  return s.length <= 63 && LABEL_VALUE.test(s);
}

/** A label (or annotation) key: optional DNS-subdomain prefix ≤ 253 and '/', then a name ≤ 63. */
export function isLabelKey(s: string): boolean {
  const slash = s.lastIndexOf('/');
  const name = slash < 0 ? s : s.slice(slash + 1);
  if (slash >= 0 && !isDns1123Subdomain(s.slice(0, slash))) return false;
  return name.length <= 63 && LABEL_NAME.test(name);
}

/** Short stable hash (hex, lowercase: valid in names and label values). */
export function shortHash(s: string, len = 10): string {
  return createHash('sha256').update(s).digest('hex').slice(0, len);
}

/**
 * `value` as a label value: kept as is when valid, else its allowed characters
 * (others as '_') cut to fit, plus a hash of the whole value so two different
 * values never share a label.
 */
export function labelValue(value: string): string {
  if (isLabelValue(value)) return value;
  const hash = shortHash(value);
  const cleaned = value
    .replace(/[^A-Za-z0-9_.-]/g, '_')
    .slice(0, 63 - hash.length - 1)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '');
  return cleaned ? `${cleaned}-${hash}` : hash;
}

/**
 * A DNS-1035 label (valid as a Service name and as a DNS-1123 subdomain):
 * `prefix-<slug of parts>-<hash of parts>`, at most `max` characters. The hash
 * keeps names distinct when slugging or cutting makes two parts look alike.
 */
export function dnsName(prefix: string, parts: string[], max = 63): string {
  const hash = shortHash(JSON.stringify(parts), 8);
  const slug = parts
    .join('-')
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-');
  const room = max - prefix.length - hash.length - 2;
  const cut = slug.slice(0, Math.max(0, room)).replace(/^-+|-+$/g, '');
  return cut ? `${prefix}-${cut}-${hash}` : `${prefix}-${hash}`;
}
