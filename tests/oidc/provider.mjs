// A real authorization server for tokengate's tests (tests/real_as.rs):
// oidc-provider 9 on 127.0.0.1 and a free port, printed as the first line of
// stdout ("PORT <n>"). One confidential client, `tokengate`, may use the
// client_credentials grant and the introspection endpoint. Tokens are opaque;
// oidc-provider answers HTTP 400 `unsupported_token_type` for any JWT-shaped
// token it is asked to introspect (it does not introspect JWTs), which is the
// answer that used to open tokengate's circuit breaker (issue 12, item 5).
//
// Usage: node provider.mjs CLIENT_SECRET
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const secret = process.argv[2];
if (!secret) {
  console.error('usage: node provider.mjs CLIENT_SECRET');
  process.exit(2);
}

// The issuer must name the real port, so listen first, then build the provider.
const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: 'tokengate',
      client_secret: secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      devInteractions: { enabled: false },
    },
    scopes: ['read'],
  });
  // Quiet: the test reads only the port line.
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`PORT ${port}`);
});

// The test kills us; also stop when it closes our stdin (the test process died).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
