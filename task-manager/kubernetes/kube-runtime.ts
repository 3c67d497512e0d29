/**
 * Setting up `--runtime kubernetes`: the namespace, the API client, the link's
 * CURVE key pair.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import * as zmq from 'zeromq';
import { KubeDeployments, type KubeConnectOptions } from './kube-deployments';

const SA_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/** The given namespace, else the broker pod's own (service account), else `default`. */
export function kubeNamespace(given: string): string {
  if (given) return given;
  try {
    return fs.readFileSync(SA_NAMESPACE, 'utf8').trim() || 'default';
  } catch {
    return 'default';
  }
}

export function kubeRuntime(opts: KubeConnectOptions): Promise<KubeDeployments> {
  return KubeDeployments.connect(opts);
}

/**
 * The link's CURVE key pair: from the env (TB_CURVE_PUBLIC_KEY / TB_CURVE_SECRET_KEY, the
 * deploy's Secret), else a new one for this run (copies get its public key in their env).
 */
export function linkCurveKeys(publicKey: string | undefined, secretKey: string | undefined, log: Logger): { publicKey: string; secretKey: string } {
  if (publicKey && secretKey) {
    if (publicKey.length !== 40 || secretKey.length !== 40) throw new Error('TB_CURVE_PUBLIC_KEY and TB_CURVE_SECRET_KEY must be Z85 keys of 40 characters (zeromq curveKeyPair())');
    return { publicKey, secretKey };
  }
  if (publicKey || secretKey) throw new Error('set both TB_CURVE_PUBLIC_KEY and TB_CURVE_SECRET_KEY, or neither (a key pair is then generated)');
  log.info({ component: 'link' }, 'link CURVE key pair generated for this run (set TB_CURVE_PUBLIC_KEY / TB_CURVE_SECRET_KEY to keep one across restarts)');
  return zmq.curveKeyPair();
}
