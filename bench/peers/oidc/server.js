// node-oidc-provider 9 with its default in-memory adapter: the "fast in-memory OAuth
// server" that `python -m bench --only oidc` compares the ledger's rotation against.
//
//   POST /token  grant_type=refresh_token&refresh_token=...&client_id=bench
//     rotateRefreshToken on: the presented token is consumed, a new one returned, and an
//     ES256-signed JWT access token (resource-indicator format "jwt"), as the ledger does.
//   POST /bench/seed?n=64  (loopback only) -> ["<refresh token>", ...]
//     n fresh chains: one Grant and one RefreshToken each, made by the provider's own models.
//
// Listens on 127.0.0.1 on a free port (or $PORT) and prints {"port": N} as its first line.
// Setup: cd bench/peers/oidc && npm ci
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const CLIENT_ID = 'bench';
const RESOURCE = 'urn:session-ledger:bench-api';
const SCOPE = 'api';
const MAX_SEED = 1024;

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench-es256' };

let provider;
let handle;

async function seed(n) {
  const client = await provider.Client.find(CLIENT_ID);
  const tokens = [];
  for (let i = 0; i < n; i += 1) {
    const accountId = `bench-${Date.now()}-${i}`;
    const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
    grant.addResourceScope(RESOURCE, SCOPE);
    const grantId = await grant.save();
    const token = new provider.RefreshToken({
      accountId,
      client,
      grantId,
      gty: 'authorization_code',
      scope: SCOPE,
      resource: RESOURCE,
      authTime: Math.floor(Date.now() / 1000),
    });
    tokens.push(await token.save());
  }
  return tokens;
}

function reply(res, status, body = '') {
  const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
  res.writeHead(status, headers).end(body);
}

function seedRoute(req, res) {
  const loopback = ['127.0.0.1', '::ffff:127.0.0.1', '::1'].includes(req.socket.remoteAddress);
  const n = Number(new URL(req.url, 'http://127.0.0.1').searchParams.get('n') ?? '64');
  if (!loopback || req.method !== 'POST' || !Number.isInteger(n) || n < 1 || n > MAX_SEED) {
    reply(res, 400);
    return;
  }
  seed(n).then(
    (tokens) => reply(res, 200, JSON.stringify(tokens)),
    (err) => reply(res, 500, JSON.stringify({ error: String(err) })),
  );
}

const server = createServer((req, res) => (req.url.startsWith('/bench/seed') ? seedRoute(req, res) : handle(req, res)));
server.keepAliveTimeout = 60_000;

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: CLIENT_ID,
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/cb'],
      id_token_signed_response_alg: 'ES256',
    }],
    jwks: { keys: [jwk] },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    rotateRefreshToken: true,
    ttl: { AccessToken: 900, RefreshToken: 7 * 24 * 3600, Grant: 30 * 24 * 3600 },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: SCOPE,
          audience: 'api',
          accessTokenTTL: 900,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  handle = provider.callback();
  console.log(JSON.stringify({ port }));
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
