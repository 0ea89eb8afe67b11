/**
 * socket.io middleware shared by the coordinator and cluster edges: a connection whose handshake does
 * not carry this protocol version is refused with VERSION_MISMATCH (the client shows both versions).
 */
import { PROTOCOL_VERSION } from '../../shared/protocol/index.js';

export function protocolVersionGate(socket: { handshake: { auth?: unknown } }, next: (err?: Error) => void): void {
  const v = (socket.handshake.auth as { protocolVersion?: unknown } | undefined)?.protocolVersion;
  if (v !== PROTOCOL_VERSION) {
    const err = new Error(`VERSION_MISMATCH: coordinator speaks protocol ${PROTOCOL_VERSION}, client sent ${JSON.stringify(v)}`);
    (err as Error & { data?: unknown }).data = { code: 'VERSION_MISMATCH', protocolVersion: PROTOCOL_VERSION };
    next(err);
    return;
  }
  next();
}
