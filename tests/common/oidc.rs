//! The real authorization server: oidc-provider 9 (`node tests/oidc/provider.mjs`).

use super::*;

pub const OIDC_SECRET: &str = "tokengate-test-secret-0123456789";

/// `node tests/oidc/<script> <args>` (a script of tests/oidc, with oidc-provider 9
/// from tests/oidc/node_modules): the child (killed when dropped; it also exits
/// when its stdin closes) and the port it printed first (`PORT <n>`). `None`
/// (after the skip line, or a CI failure) when node or the npm package is
/// missing. Its stdout is read to the end in the background: oidc-provider
/// prints notices later, and a closed pipe would kill it (EPIPE) mid-test.
pub async fn start_node_script(
    test: &str,
    script: &str,
    args: &[&str],
) -> Option<(tokio::process::Child, u16)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    let install = "npm ci --prefix tests/oidc (Node 20+)";
    if !dir.join("node_modules/oidc-provider/package.json").exists() {
        skip_for_missing(test, &format!("the npm package oidc-provider ({install})"));
        return None;
    }
    use tokio::io::AsyncBufReadExt;
    let Ok(mut child) = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        // Kept open: the script exits when its stdin closes.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        skip_for_missing(test, &format!("node ({install})"));
        return None;
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{script} did not print its port within 30s"))
        .unwrap_or_else(|e| panic!("reading {script}'s stdout: {e}"))
        .unwrap_or_else(|| panic!("{script} exited before printing its port"));
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from {script}: {line}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some((child, port))
}

/// `node tests/oidc/provider.mjs` (oidc-provider 9 from tests/oidc/node_modules);
/// killed when dropped.
pub struct OidcProvider {
    child: tokio::process::Child,
    pub port: u16,
}

impl OidcProvider {
    /// `None` (after the skip line, or a CI failure) when node or the npm
    /// package is missing.
    pub async fn start(test: &str) -> Option<Self> {
        let (child, port) = start_node_script(test, "provider.mjs", &[OIDC_SECRET]).await?;
        Some(Self { child, port })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its issuer identifier (the base URL, as in its metadata).
    pub fn issuer(&self) -> String {
        self.url("")
    }

    /// A real, unbound access token (client_credentials grant).
    pub async fn bearer_token(&self, client: &TestClient) -> String {
        self.access_token(client, None).await["access_token"]
            .as_str()
            .expect("access_token in the token response")
            .to_owned()
    }

    /// A real access token (client_credentials grant); with `dpop`, the
    /// token request carries a proof by that key and the token is bound to it.
    pub async fn access_token(&self, client: &TestClient, dpop: Option<&DpopKey>) -> Value {
        use base64::Engine as _;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("tokengate:{OIDC_SECRET}"));
        let mut req = request(Method::POST, &self.url("/token"))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(key) = dpop {
            // The AS checks iat against its own (real) clock.
            let now = tokengate::clock::SystemClock.unix_secs();
            let spec = ProofSpec::new("POST", &self.url("/token"), now, None);
            req = req.header("dpop", key.proof(&spec));
        }
        let r = send(
            client,
            req.body(full("grant_type=client_credentials&scope=read"))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "token endpoint: {}", r.text());
        r.json()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
