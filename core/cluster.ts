/**
 * What the core needs when several brokers share one Redis (README "Several
 * brokers"): who owns a stateful sequence, and a way to hand a request to the
 * broker that owns it. The core declares these; cluster/ implements them on
 * Redis and HTTP, app/server.ts wires them. Without them (one broker, the
 * embedded registry) the Broker never calls anything here.
 */
import type { InferRequest, InferResult } from './types';

/** Where a sequence lives, as the shared directory says. */
export type SequencePlace =
  /** This broker holds it (or nobody does and this broker just took it, on a START). */
  | { kind: 'mine' }
  /** No broker holds it and nothing is remembered of it. */
  | { kind: 'none' }
  /** Another live broker holds it: forward there. */
  | { kind: 'remote'; broker: string; url: string }
  /** It is not active any more, for this reason (it ended, expired, or its owner broker is gone). */
  | { kind: 'ended'; reason: string };

/** The shared directory of stateful sequences: one owner broker per model + sequence id. */
export interface SequenceDirectory {
  /** This broker's id. */
  readonly self: string;
  /** A START arrived here: take the sequence unless a live broker holds it (then its place). Atomic across brokers. */
  claim(model: string, id: string): Promise<SequencePlace>;
  /** A later request arrived here for a sequence this broker does not hold: where it lives. */
  locate(model: string, id: string): Promise<SequencePlace>;
  /** The sequence ended here (end, cancel, idle, lost): the lease is dropped and the reason remembered. */
  release(model: string, id: string, reason: string): void;
}

/** Hands a request to another broker and relays its answer (one hop: the request is marked `forwardedBy`). */
export interface Forwarder {
  /** Resolves with the owner's answer or rejects with a BrokerError (UNAVAILABLE when the owner cannot be reached); never hangs past `deadlineMs`. */
  forward(target: { broker: string; url: string }, req: InferRequest, deadlineMs: number): Promise<InferResult>;
}

export interface ClusterLink {
  sequences: SequenceDirectory;
  forwarder: Forwarder;
  /**
   * Asked only while this broker has no ready copy of a stateless model: a
   * broker holding copies of it when all `maxReplicas` places of the shared
   * budget are taken (its requests go there), else undefined (serve here).
   */
  overflow?(model: string, maxReplicas: number): Promise<{ broker: string; url: string } | undefined>;
}
