/**
 * Who may join: the signed join challenge bound to one link, the enrollment allowlist, and the
 * one-id-per-key binding for the coordinator's lifetime. Knows nothing about rounds.
 *
 * The binding stays strict: one enrolled key may not appear under two ids (it would count as two
 * participants of a secure round, and a second id could take the first one's seat). Rejoining with
 * the same identity is supported by keeping the id: a client's default id is derived from its key
 * (client/client.ts idForKey), so a fresh --state with the same identity file gets the same id, and
 * `--id` names it explicitly. The refusal says which id the key holds.
 */
import { readFile } from 'node:fs/promises';
import { ConfigError, ProtocolError, errorMessage } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { PROTOCOL_VERSION, type Hello } from '../shared/protocol/index.js';
import {
  AuthorizedClients, JoinVerifier, formatPublicKey, makeCoordinatorBoxKey, parseAuthorizedClients,
  type BoxKeyCertificate, type BoxKeyPair, type Identity,
} from '../shared/crypto/index.js';

const log = logger('fedlora:coordinator:join');

export interface Admitted { hello: Hello; key: Uint8Array; name?: string }

export class Admission {
  readonly #verifier: JoinVerifier;
  readonly box: { keyPair: BoxKeyPair; certificate: BoxKeyCertificate };
  readonly #keyOfId = new Map<string, string>();
  readonly #idOfKey = new Map<string, string>();

  private constructor(verifier: JoinVerifier, box: Admission['box']) {
    this.#verifier = verifier;
    this.box = box;
  }

  static async create(o: { identity: Identity; authorizedClients?: AuthorizedClients | string | string[]; allowAnyClient?: boolean }): Promise<{ admission: Admission; enrolled: number | null }> {
    let allow: AuthorizedClients | undefined;
    const a = o.authorizedClients;
    if (a instanceof AuthorizedClients) allow = a;
    else if (Array.isArray(a)) allow = parseAuthorizedClients(a.join('\n'), 'authorizedClients');
    else if (typeof a === 'string') allow = parseAuthorizedClients(await readFile(a, 'utf8').catch((e: unknown) => { throw new ConfigError(`cannot read --authorized-clients ${a}: ${errorMessage(e)}`); }), a);
    const verifier = new JoinVerifier({ coordinator: o.identity, ...(allow ? { authorized: allow } : {}), allowAny: o.allowAnyClient === true });
    return { admission: new Admission(verifier, makeCoordinatorBoxKey(o.identity)), enrolled: allow ? allow.entries().filter((e) => !e.revoked).length : null };
  }

  challenge(linkId: string): Record<string, unknown> {
    return { challenge: this.#verifier.challenge(linkId), boxKey: this.box.certificate };
  }

  /**
   * Checks a parsed hello and its join proof for this link. Throws; the caller replies and closes
   * the link (a malformed hello is refused by parseHello before this, without closing).
   */
  admit(h: Hello, linkId: string): Admitted {
    if (h.protocolVersion !== PROTOCOL_VERSION) throw new ProtocolError('VERSION_MISMATCH', `coordinator speaks protocol ${PROTOCOL_VERSION}, client ${h.protocolVersion}`);
    if (!h.proof) throw new ProtocolError('AUTH_REQUIRED', 'hello needs a join proof (request auth:challenge first)');
    let who;
    try {
      who = this.#verifier.verify(h.proof, linkId);
    } catch (e) {
      log.warn(`join refused for ${linkId} claiming ${h.clientId}: ${errorMessage(e)}`);
      throw e;
    }
    const boundKey = this.#keyOfId.get(h.clientId);
    const boundId = this.#idOfKey.get(who.key);
    if ((boundKey && boundKey !== who.key) || (boundId && boundId !== h.clientId)) {
      throw new ProtocolError('IDENTITY_MISMATCH', boundKey && boundKey !== who.key ? `client id ${h.clientId} belongs to another key` : `this key already joined as ${boundId}; rejoin under that id (client --id ${boundId})`);
    }
    this.#keyOfId.set(h.clientId, who.key);
    this.#idOfKey.set(who.key, h.clientId);
    return { hello: h, key: who.publicKey, ...(who.name ? { name: who.name } : {}) };
  }

  describe(a: Admitted): string {
    return a.name ?? `${formatPublicKey(a.key).slice(0, 20)}…`;
  }
}
