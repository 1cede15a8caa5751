// A real authorization server issuing RFC 9068 JWT access tokens, for
// tokengate's tests/jwt.rs: oidc-provider 9 on 127.0.0.1, the port printed as
// the first line of stdout ("PORT <n>").
//
// - Resource indicators (features.resourceIndicators) choose the token format:
//   `urn:tokengate:api` and `urn:tokengate:other` get ES256 JWTs (audience =
//   the resource), `urn:tokengate:rs` an RS256 JWT; a token request without a
//   `resource` gets an opaque token (introspected as usual).
// - RFC 9701 signed introspection answers (features.jwtIntrospection; RS256).
// - Signing keys come from the `--gen N` argument (kids `es-N`, `rs-N`): start
//   again on the same `--port` with another N to rotate them.
// - Test-only routes, outside oidc-provider:
//   GET  /_counts              how many requests each path got (proves "no AS call")
//   POST /_jwt_introspect      RFC 7662 introspection of *our JWTs* (oidc-provider
//                              answers 400 for any JWT; the hybrid mode needs an AS
//                              that knows about revocation): verifies with our
//                              keys and answers active unless revoked
//   POST /_revoke_jwt          token=<jwt>: revoked for /_jwt_introspect
//   POST /_sign                claims=<json>: an at+jwt over those claims signed
//                              with our ES256 key (`kid` in the JSON: the header's;
//                              default ours), for forgeries in tests
//   POST /_answers?mode=M      how /token/introspection answers from now on:
//                              `normal`, `tamper` (a byte of the JWS signature
//                              flipped), `plain` (our Accept is dropped, so the
//                              answer is unsigned JSON)
//
// Usage: node jwt.mjs CLIENT_SECRET [--port N] [--gen N]
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const secret = process.argv[2];
if (!secret) {
  console.error('usage: node jwt.mjs CLIENT_SECRET [--port N] [--gen N]');
  process.exit(2);
}
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const wantPort = Number(arg('--port', '0'));
const gen = arg('--gen', '1');

function jwk(key, kid, alg) {
  return { ...key.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwks = { keys: [jwk(ec.privateKey, `es-${gen}`, 'ES256'), jwk(rsa.privateKey, `rs-${gen}`, 'RS256')] };
const publicJwks = jose.createLocalJWKSet({
  keys: [jwk(ec.publicKey, `es-${gen}`, 'ES256'), jwk(rsa.publicKey, `rs-${gen}`, 'RS256')],
});

const resources = {
  'urn:tokengate:api': 'ES256',
  'urn:tokengate:other': 'ES256',
  'urn:tokengate:rs': 'RS256',
};

const counts = {};
const revoked = new Set();
let answerMode = 'normal';

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

// The test reads only the port line and then closes our stdout: oidc-provider's
// later notices (e.g. on the first signed introspection answer) must not kill
// us with EPIPE.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

const server = createServer();
server.listen(wantPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'tokengate',
      client_secret: secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      introspection_signed_response_alg: 'RS256',
    }],
    jwks,
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      jwtIntrospection: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resource) => {
          const alg = resources[resource];
          if (!alg) throw new Error(`unknown resource ${resource}`);
          return {
            scope: 'read write',
            audience: resource,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        },
      },
    },
    scopes: ['read', 'write'],
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    const path = req.url.split('?')[0];
    counts[path] = (counts[path] || 0) + 1;
    try {
      if (path === '/_counts') return json(res, 200, counts);
      if (path === '/_answers') {
        answerMode = new URL(req.url, issuer).searchParams.get('mode');
        return json(res, 200, { mode: answerMode });
      }
      if (path === '/_revoke_jwt') {
        const { jti } = jose.decodeJwt((await readBody(req)).get('token'));
        revoked.add(jti);
        return json(res, 200, {});
      }
      if (path === '/_sign') {
        // A JWS over any claims with our ES256 key: forgeries that only a
        // signature can tell apart (another issuer's `iss`, another `kid`).
        const body = JSON.parse((await readBody(req)).get('claims'));
        const header = { alg: 'ES256', typ: 'at+jwt', kid: body.kid || `es-${gen}` };
        delete body.kid;
        const key = await jose.importJWK(jwk(ec.privateKey, `es-${gen}`, 'ES256'), 'ES256');
        const jws = await new jose.SignJWT(body).setProtectedHeader(header).sign(key);
        res.writeHead(200, { 'content-type': 'text/plain' });
        return res.end(jws);
      }
      if (path === '/_jwt_introspect') {
        const basic = Buffer.from(`tokengate:${secret}`).toString('base64');
        if (req.headers.authorization !== `Basic ${basic}`) return json(res, 401, { error: 'invalid_client' });
        const token = (await readBody(req)).get('token') || '';
        try {
          const { payload } = await jose.jwtVerify(token, publicJwks, { issuer, typ: 'at+jwt' });
          if (revoked.has(payload.jti)) return json(res, 200, { active: false });
          return json(res, 200, { ...payload, active: true, token_type: 'Bearer' });
        } catch {
          return json(res, 200, { active: false });
        }
      }
      if (path === '/token/introspection' && answerMode === 'plain') {
        delete req.headers.accept;
      }
      if (path === '/token/introspection' && answerMode === 'tamper') {
        const end = res.end.bind(res);
        res.end = (chunk, ...rest) => {
          if (chunk) {
            const s = Buffer.from(chunk).toString();
            const i = s.lastIndexOf('.') + 10;
            const flipped = s[i] === 'A' ? 'B' : 'A';
            chunk = Buffer.from(s.slice(0, i) + flipped + s.slice(i + 1));
          }
          return end(chunk, ...rest);
        };
      }
    } catch (e) {
      return json(res, 400, { error: 'invalid_request', error_description: String(e) });
    }
    return callback(req, res);
  });
  console.log(`PORT ${port}`);
});

// The test kills us; also stop when it closes our stdin (the test process died).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
