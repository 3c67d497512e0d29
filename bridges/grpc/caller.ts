/** The access-policy view of a gRPC call: its credential (metadata) and peer address. */
import type * as grpc from '@grpc/grpc-js';
import { credentialOf, type Caller } from '../shared/access';

/** grpc-js peers look like `127.0.0.1:5000`, `[::1]:5000` or `ipv4:127.0.0.1:5000`. */
export function peerAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  if (p.startsWith('[')) return p.slice(1, p.indexOf(']'));
  const colons = p.split(':').length - 1;
  return colons === 1 ? p.slice(0, p.lastIndexOf(':')) : p;
}

/**
 * The address is read on first use only: inference calls never need it, and
 * grpc-js builds the peer string from the socket on every getPeer().
 */
export function callerOf(call: { metadata: grpc.Metadata; getPeer(): string }): Caller {
  const md = call.metadata;
  let address: string | undefined;
  let read = false;
  return {
    credential: credentialOf(md.get('authorization')[0], md.get('x-api-key')[0]),
    get address() {
      if (!read) {
        read = true;
        address = peerAddress(call.getPeer());
      }
      return address;
    },
  };
}
