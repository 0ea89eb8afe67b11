/**
 * Why a connection to the coordinator failed, in the operator's terms. socket.io reports every
 * failed attempt as "websocket error"; the transport's own error (a Node socket or TLS error, with a
 * code such as ECONNREFUSED or DEPTH_ZERO_SELF_SIGNED_CERT) rides along in `description` (or
 * `cause`). Problems that retrying cannot fix (an untrusted certificate, the wrong scheme) are
 * `fatal`: the client stops with a ConfigError instead of retrying for ever.
 */
import { connect as tlsConnect } from 'node:tls';
import { ConfigError } from '../shared/errors.js';

export interface ConnectDiagnosis {
  /** The transport's error code (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT, …) or a short tag. */
  code: string;
  /** One line for the log or the error. */
  message: string;
  /** Retrying cannot help: stop and tell the operator. */
  fatal: boolean;
}

/** Certificate chain errors of Node/OpenSSL that mean "this certificate is not trusted here". */
const UNTRUSTED = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE', 'CERT_REJECTED',
]);

/**
 * Checks a coordinator URL before anything connects: it needs an http:// or https:// scheme, a host
 * and nothing socket.io would misread. Returns the parsed URL; throws ConfigError naming the fix.
 */
export function parseCoordinatorUrl(raw: string): URL {
  const s = raw.trim();
  const hint = (why: string) => new ConfigError(`--coordinator ${JSON.stringify(raw)}: ${why}`);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw hint(/^[^:/]+:\d+(\/.*)?$/.test(s) || !/^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? `not a URL; it needs a scheme, e.g. http://${s} (or https:// for a coordinator started with --tls-cert)` : 'not a valid URL');
  }
  // "localhost:7777" parses as scheme "localhost:" with path "7777"
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    if (!s.includes('//')) throw hint(`no scheme; write http://${s} (or https:// for a coordinator started with --tls-cert)`);
    throw hint(`scheme ${u.protocol}// is not supported; use http:// or https://`);
  }
  if (!u.hostname) throw hint('no host name');
  if (u.username || u.password) throw hint('credentials in the URL are not used; remove them');
  // socket.io reads a path as a namespace, which the coordinator does not serve
  if (u.pathname !== '/' && u.pathname !== '') throw hint(`the coordinator is served at the root; drop the path ${u.pathname}: ${u.protocol}//${u.host}`);
  return u;
}

/** The transport error under socket.io's "websocket error". */
function transportError(e: unknown): { code?: string; message: string } {
  const o = e as { message?: unknown; description?: unknown; cause?: unknown } | null;
  for (const inner of [o?.description, o?.cause, (o?.description as { error?: unknown } | undefined)?.error]) {
    if (inner instanceof Error) return { code: (inner as NodeJS.ErrnoException).code, message: inner.message.split('\n')[0]!.trim() };
  }
  if (typeof o?.description === 'string') return { message: o.description };
  return { message: typeof o?.message === 'string' ? o.message : String(e) };
}

/** Whether host:port completes a TLS handshake (certificate not checked): tells "wrong scheme" from a reset. */
export function speaksTls(host: string, port: number, timeoutMs = 3000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tlsConnect({ host, port, rejectUnauthorized: false, ...(/^[\d.]+$|:/.test(host) ? {} : { servername: host }) });
    const done = (v: boolean) => { clearTimeout(t); s.destroy(); resolve(v); };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('secureConnect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Explains one failed connection attempt to `url`; `withCa` says whether --tls-ca was given. */
export async function diagnoseConnectError(e: unknown, url: URL, withCa: boolean): Promise<ConnectDiagnosis> {
  const { code, message } = transportError(e);
  const where = url.host;
  const https = url.protocol === 'https:';
  const port = Number(url.port || (https ? 443 : 80));
  if (code && UNTRUSTED.has(code)) {
    return {
      code, fatal: true,
      message: `the coordinator's TLS certificate at ${where} is not trusted (${code}: ${message}); `
        + (withCa ? 'the --tls-ca file given is not the certificate (or the CA) that signed it' : 'pass --tls-ca FILE with the coordinator\'s certificate (or the CA that signed it)'),
    };
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return { code, fatal: true, message: `the coordinator's TLS certificate at ${where} is not valid now (${code}); the operator must renew it` };
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return { code, fatal: true, message: `the coordinator's TLS certificate does not name ${url.hostname} (${message}); connect with a host name or IP the certificate lists (subjectAltName)` };
  }
  if (https && (code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER') && /wrong version number|packet length|http request|unknown protocol/i.test(message)) {
    return { code, fatal: true, message: `${where} does not speak TLS (${code}): the coordinator serves plain http; use http://${where}${url.pathname === '/' ? '' : url.pathname}` };
  }
  if (!https && (code === 'ECONNRESET' || /socket hang up/i.test(message)) && (await speaksTls(url.hostname, port))) {
    return { code: code ?? 'ECONNRESET', fatal: true, message: `${where} speaks TLS: the coordinator serves https; use https://${where} (with --tls-ca FILE for a self-signed certificate)` };
  }
  if (code === 'ECONNREFUSED') return { code, fatal: false, message: `connection refused (ECONNREFUSED ${where}): is the coordinator running and listening on that address?` };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { code, fatal: false, message: `host name ${url.hostname} not found (${code})` };
  if (code === 'ETIMEDOUT' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return { code, fatal: false, message: `${where} unreachable (${code})` };
  if (/^timeout$/i.test(message)) return { code: 'TIMEOUT', fatal: false, message: `no answer from ${where} within the connect timeout` };
  return { code: code ?? 'ERROR', fatal: false, message: code && !message.includes(code) ? `${code}: ${message}` : message };
}

/** About how long socket.io waits before attempt `failures` + 1 (its backoff: initial · 2^(failures−1), capped; ±30 % jitter). */
export function nextRetryMs(failures: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.max(0, Math.min(failures - 1, 30)));
}
