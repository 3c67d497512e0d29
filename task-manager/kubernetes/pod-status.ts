/**
 * What a copy's pod says about why it does not serve, in the words
 * Kubernetes uses, for the model's readiness reason. Pure. A copy is ready
 * only when it sent READY on the link; the pod's Ready condition is never
 * enough, so this only explains why a copy is not there yet or went away.
 */

export interface PodProblem {
  /** Kubernetes' reason: Unschedulable, ImagePullBackOff, ErrImagePull, CrashLoopBackOff, OOMKilled, ... */
  reason: string;
  /** One line for the readiness reason: "<reason>: <message>". */
  message: string;
  /** True when waiting will not fix it without an operator (or a free GPU): report it, do not just wait. */
  stuck: boolean;
}

/** Minimal shape of a Pod's status we read (as the API returns it). */
export interface PodStatusLike {
  metadata?: { name?: string };
  status?: {
    phase?: string;
    conditions?: { type?: string; status?: string; reason?: string; message?: string }[];
    containerStatuses?: {
      name?: string;
      restartCount?: number;
      state?: { waiting?: { reason?: string; message?: string }; terminated?: { reason?: string; exitCode?: number; message?: string } };
      lastState?: { terminated?: { reason?: string; exitCode?: number } };
    }[];
  };
}

const STUCK_WAITING = new Set(['ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'CrashLoopBackOff', 'CreateContainerConfigError', 'CreateContainerError']);

export function podProblem(pod: PodStatusLike): PodProblem | undefined {
  const st = pod.status ?? {};
  const unsched = (st.conditions ?? []).find((c) => c.type === 'PodScheduled' && c.status === 'False');
  if (unsched) {
    const reason = unsched.reason ?? 'Unschedulable';
    return { reason, message: `${reason}: ${unsched.message ?? 'no node fits the pod'}`, stuck: true };
  }
  for (const cs of st.containerStatuses ?? []) {
    const term = cs.state?.terminated;
    const last = cs.lastState?.terminated;
    // OOM first: a copy in CrashLoopBackOff because it ran out of memory needs more memory, not a fix.
    if (term?.reason === 'OOMKilled' || last?.reason === 'OOMKilled') {
      const restarts = cs.restartCount ? ` (${cs.restartCount} restarts)` : '';
      return { reason: 'OOMKilled', message: `OOMKilled: the copy ran out of memory (exit ${term?.exitCode ?? last?.exitCode ?? 137})${restarts}`, stuck: (cs.restartCount ?? 0) > 0 };
    }
    const waiting = cs.state?.waiting;
    if (waiting?.reason && waiting.reason !== 'ContainerCreating' && waiting.reason !== 'PodInitializing') {
      const lastExit = last ? `; last exit ${last.exitCode ?? '?'} (${last.reason ?? 'unknown'})` : '';
      return {
        reason: waiting.reason,
        message: `${waiting.reason}: ${waiting.message ?? 'waiting'}${lastExit}`,
        stuck: STUCK_WAITING.has(waiting.reason),
      };
    }
    if (term) {
      return { reason: term.reason ?? 'Terminated', message: `${term.reason ?? 'Terminated'}: exit ${term.exitCode ?? '?'}${term.message ? ` (${term.message})` : ''}`, stuck: false };
    }
  }
  if (st.phase === 'Failed') return { reason: 'Failed', message: 'Failed: the pod failed', stuck: true };
  return undefined;
}
