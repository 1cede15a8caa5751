//! The real authorization server that issues RFC 9068 JWT access tokens:
//! oidc-provider 9 (`node tests/oidc/jwt.mjs`), with ES256 and RS256 keys,
//! RFC 9701 signed answers and request counts; and helpers to read and forge
//! JWS parts. Used by tests/jwt.rs and tests/jwt_issuers.rs.

use super::*;
use base64::Engine as _;
use http::Method;

pub const JWT_AS_SECRET: &str = "tokengate-jwt-test-secret-0123456789";

/// `node tests/oidc/jwt.mjs`; killed when dropped.
pub struct JwtAs {
    child: tokio::process::Child,
    pub port: u16,
    pub client: TestClient,
}

impl JwtAs {
    /// `port`: 0 for a free one, or the port of a stopped instance (key
    /// rotation: same issuer, new keys `es-<gen>` / `rs-<gen>`). `None` when
    /// node or the npm package is missing (after the skip line).
    pub async fn start(test: &str, port: u16, gen: u32) -> Option<Self> {
        let (port, gen) = (port.to_string(), gen.to_string());
        let args = [JWT_AS_SECRET, "--port", &port, "--gen", &gen];
        let (child, port) = start_node_script(test, "jwt.mjs", &args).await?;
        Some(Self {
            child,
            port,
            client: http1_client(),
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// A token from the client_credentials grant: a JWT for `resource`, an
    /// opaque token without one.
    pub async fn token(&self, resource: Option<&str>) -> String {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("tokengate:{JWT_AS_SECRET}"));
        let mut form = "grant_type=client_credentials&scope=read".to_owned();
        if let Some(r) = resource {
            form.push_str(&format!("&resource={r}"));
        }
        let req = request(Method::POST, &self.url("/token"))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap();
        let r = send(&self.client, req).await;
        assert_eq!(r.status, 200, "token endpoint: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// Requests the AS has received on `path` so far.
    pub async fn count(&self, path: &str) -> u64 {
        let req = request(Method::GET, &self.url("/_counts"))
            .body(empty())
            .unwrap();
        send(&self.client, req).await.json()[path]
            .as_u64()
            .unwrap_or(0)
    }

    /// An `at+jwt` over `claims`, signed with this AS's ES256 key (header
    /// `kid`: `kid`, else this AS's): what only the signature can refuse.
    pub async fn sign(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut claims = claims.clone();
        if let Some(kid) = kid {
            claims["kid"] = kid.into();
        }
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("claims", &claims.to_string())
            .finish();
        let req = request(Method::POST, &self.url("/_sign"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap();
        let r = send(&self.client, req).await;
        assert_eq!(r.status, 200, "/_sign: {}", r.text());
        r.text()
    }

    pub async fn post(&self, path_and_query: &str, form: String) {
        let req = request(Method::POST, &self.url(path_and_query))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap();
        assert_eq!(send(&self.client, req).await.status, 200);
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub fn part(token: &str, i: usize) -> serde_json::Value {
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

/// `token` with its header and payload replaced (the signature kept).
pub fn forge(token: &str, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let sig = token.rsplit('.').next().unwrap();
    format!(
        "{}.{}.{sig}",
        b64(&header.to_string()),
        b64(&claims.to_string())
    )
}
