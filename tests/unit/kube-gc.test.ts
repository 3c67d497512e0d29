/**
 * KubeTaskManager.collect(): the Deployments (and link Secrets) of brokers a
 * BrokerLiveness says are dead are removed; its own and live brokers' stay.
 * A unit test of one class: the Kubernetes calls are an in-memory stand-in
 * (the real client and the FAKE API server are in tests/e2e/kube-runtime.test.ts).
 */
import pino from 'pino';
import { LinkServer } from '../../task-manager/link-server';
import { KubeTaskManager, type BrokerLiveness, type KubeTaskManagerOptions } from '../../task-manager/kubernetes/kube-task-manager';
import { ANNOTATIONS, LABELS, deploymentName } from '../../task-manager/kubernetes/manifests';

test('collect() removes the Deployments and Secrets of dead brokers only', async () => {
  const deployments = new Map<string, string>([
    [deploymentName('a', 'me'), 'me'],
    [deploymentName('a', 'alive'), 'alive'],
    [deploymentName('a', 'dead'), 'dead'],
    [deploymentName('b', 'dead'), 'dead'],
  ]);
  const secrets = new Set(deployments.keys());
  const asked: Record<string, string>[] = [];
  const kube = {
    async deployments(labels: Record<string, string>) {
      asked.push(labels);
      return [...deployments].map(([name, owner]) => ({ name, labels: { [LABELS.owner]: owner }, annotations: { [ANNOTATIONS.owner]: owner } }));
    },
    async remove(name: string) {
      return deployments.delete(name);
    },
    async removeSecret(name: string) {
      return secrets.delete(name);
    },
  } as unknown as KubeTaskManagerOptions['kube'];
  const liveness: BrokerLiveness = { isAlive: async (id) => id === 'alive' };
  const tm = new KubeTaskManager({ kube, link: new LinkServer({ transport: 'tcp' }), brokerId: 'me', namespace: 'ns', logger: pino({ level: 'silent' }), liveness });
  const removed = await tm.collect();
  expect(removed.sort()).toEqual([deploymentName('a', 'dead'), deploymentName('b', 'dead')].sort());
  expect([...deployments.values()].sort()).toEqual(['alive', 'me']);
  expect([...secrets].sort()).toEqual([deploymentName('a', 'alive'), deploymentName('a', 'me')].sort());
  // Only model Deployments made by a broker are looked at.
  expect(asked[0]).toEqual({ [LABELS.managedBy]: 'tensorbroker', [LABELS.name]: 'tensorbroker-model' });
  // Without a liveness source nothing is collected.
  const none = new KubeTaskManager({ kube, link: new LinkServer({ transport: 'tcp' }), brokerId: 'me', namespace: 'ns', logger: pino({ level: 'silent' }) });
  expect(await none.collect()).toEqual([]);
});
