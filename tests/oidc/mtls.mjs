// A real authorization server issuing RFC 8705 certificate-bound access
// tokens, for tokengate's tests (tests/mtls.rs): oidc-provider 9 with its
// `mTLS` feature (`certificateBoundAccessTokens: true`) on 127.0.0.1 and a free
// port, printed as the first line of stdout ("PORT <n>").
//
// Clients:
// * `tokengate` (confidential, CLIENT_SECRET): introspection only.
// * `bound-app` (confidential, CLIENT_SECRET): client_credentials with
//   `tls_client_certificate_bound_access_tokens: true`, so every token it gets
//   is bound to the certificate of the token request, and the introspection
//   answer carries `cnf["x5t#S256"]`.
//
// This AS speaks plain HTTP, so the "client certificate" of a token request is
// the PEM in the `x-test-client-cert` header (URL-encoded, as nginx's
// $ssl_client_escaped_cert): only the test sends it, this server is on
// loopback, and it exists only for the test. A real deployment reads the
// certificate from its TLS layer.
//
// Usage: node mtls.mjs CLIENT_SECRET
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const secret = process.argv[2];
if (!secret) {
  console.error('usage: node mtls.mjs CLIENT_SECRET');
  process.exit(2);
}

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const confidential = {
    client_secret: secret,
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  };
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [
      { ...confidential, client_id: 'tokengate', grant_types: [] },
      {
        ...confidential,
        client_id: 'bound-app',
        grant_types: ['client_credentials'],
        tls_client_certificate_bound_access_tokens: true,
      },
    ],
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      devInteractions: { enabled: false },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate(ctx) {
          const escaped = ctx.get('x-test-client-cert');
          return escaped ? decodeURIComponent(escaped) : undefined;
        },
      },
    },
    scopes: ['read'],
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`PORT ${port}`);
});

// The test kills us; also stop when it closes our stdin (the test process died).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
