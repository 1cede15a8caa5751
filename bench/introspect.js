// njs handler of the `nginx-auth-request` row of bench/run.sh: the baseline of
// issue 6 ("nginx auth_request + njs", no cache). nginx's `auth_request` sends
// each request to an internal location whose `js_content` is `introspect`,
// which does what an RFC 7662 resource server must: POST the token as an
// `application/x-www-form-urlencoded` body to the introspection endpoint with
// HTTP Basic client credentials, parse the JSON answer and let the request
// through (200) only when `"active": true`; 401 otherwise. No cache.
//
// It uses `ngx.fetch` (njs >= 0.5.1; Debian bookworm's libnginx-mod-http-js is
// njs 0.7.9), the shape of the njs introspection examples that do not route
// through a proxy_pass location. Written for njs 0.7.9: no optional chaining,
// Buffer for base64.
//
// Variables it reads (set in the nginx server block):
//   $oauth_introspection_url, $oauth_client_id, $oauth_client_secret
//
// It never logs the token.

async function introspect(r) {
    const header = r.headersIn['Authorization'] || '';
    if (header.length < 8 || header.slice(0, 7).toLowerCase() !== 'bearer ') {
        r.return(401);
        return;
    }
    const token = header.slice(7).trim();
    const v = r.variables;
    const basic = 'Basic ' + Buffer.from(
        encodeURIComponent(v.oauth_client_id) + ':' + encodeURIComponent(v.oauth_client_secret)
    ).toString('base64');
    try {
        const reply = await ngx.fetch(v.oauth_introspection_url, {
            method: 'POST',
            headers: {
                'Authorization': basic,
                'Content-Type': 'application/x-www-form-urlencoded',
                'Accept': 'application/json',
            },
            body: 'token=' + encodeURIComponent(token) + '&token_type_hint=access_token',
        });
        if (reply.status !== 200) {
            // An AS failure is not a bad token: fail closed, but not with 401
            // (auth_request turns any status but 2xx/401/403 into a 500).
            r.error('introspection: authorization server answered HTTP ' + reply.status);
            r.return(503);
            return;
        }
        const answer = await reply.json();
        r.return(answer.active === true ? 200 : 401);
    } catch (e) {
        r.error('introspection failed: ' + e.message);
        r.return(503);
    }
}

export default { introspect };
