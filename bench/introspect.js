// njs handler of the `nginx-auth-request` row of bench/run.sh: the baseline of
// issue 6 ("nginx auth_request + njs", no cache). nginx's `auth_request` sends
// each request to an internal location whose `js_content` is `introspect`,
// which does what an RFC 7662 resource server must: POST the token as an
// `application/x-www-form-urlencoded` body to the introspection endpoint with
// HTTP Basic client credentials, parse the JSON answer and let the request
// through (200) only when `"active": true`; 401 otherwise. No cache.
//
// `introspect` (the default) calls the AS with `ngx.fetch` (njs >= 0.5.1;
// Debian bookworm's libnginx-mod-http-js is njs 0.7.9), which opens a new
// connection per call. `introspect_subrequest` (run.sh --njs subrequest) is
// nginx's own published pattern: `r.subrequest` to an internal `proxy_pass`
// location (`/_introspect_send`, which adds the client credentials and the
// content type), here with keep-alive to the AS. Written for njs 0.7.9: no
// optional chaining, Buffer for base64.
//
// Variables `introspect` reads (set in its nginx location):
//   $oauth_introspection_url, $oauth_client_id, $oauth_client_secret
//
// Neither logs the token.

// The bearer token of the request, or null.
function bearer(r) {
    const header = r.headersIn['Authorization'] || '';
    if (header.length < 8 || header.slice(0, 7).toLowerCase() !== 'bearer ') {
        return null;
    }
    return header.slice(7).trim();
}

function form(token) {
    return 'token=' + encodeURIComponent(token) + '&token_type_hint=access_token';
}

async function introspect(r) {
    const token = bearer(r);
    if (!token) {
        r.return(401);
        return;
    }
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
            body: form(token),
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

async function introspect_subrequest(r) {
    const token = bearer(r);
    if (!token) {
        r.return(401);
        return;
    }
    try {
        const reply = await r.subrequest('/_introspect_send', { method: 'POST', body: form(token) });
        if (reply.status !== 200) {
            r.error('introspection: authorization server answered HTTP ' + reply.status);
            r.return(503);
            return;
        }
        const answer = JSON.parse(reply.responseText);
        r.return(answer.active === true ? 200 : 401);
    } catch (e) {
        r.error('introspection failed: ' + e.message);
        r.return(503);
    }
}

export default { introspect, introspect_subrequest };
