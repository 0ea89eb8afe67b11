/**
 * The coordinator's HTTP face: `GET /status` (JSON) and `GET /metrics` (Prometheus text). Both read
 * snapshots the caller builds; nothing here touches rounds or sockets. Operator-facing and
 * unauthenticated: bind the coordinator to an interface only operators reach, or put it behind a proxy.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface HttpSources {
  status(): unknown;
  /** Prometheus exposition text (prom-client renders asynchronously). */
  metrics(): string | Promise<string>;
}

export function httpHandler(src: HttpSources): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') { res.writeHead(405, { allow: 'GET' }).end(); return; }
    try {
      if (path === '/status') {
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(src.status()));
      } else if (path === '/metrics') {
        Promise.resolve().then(() => src.metrics()).then(
          (text) => { res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'cache-control': 'no-store' }).end(text); },
          () => { if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }); res.end('internal error\n'); },
        );
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      }
    } catch {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    }
  };
}
