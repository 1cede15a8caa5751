//! Issue 12 items 3, 4 (routing half) and 7: the route choice cannot be dodged
//! by spelling the path, method or host another way. Each test replays the
//! attack through real sockets (raw bytes where the exact spelling matters, an
//! HTTP/2 connection for `:authority` vs `host`, a real Flask/Werkzeug upstream
//! where it is the framework's reading that makes the attack work) and checks
//! that the upstream never sees the request, or sees it only after the
//! stricter route's token checks.

mod common;

use common::*;
use http::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tokengate::config::{Mode, RawConfig, RawRoute};
use tokio::net::TcpStream;

/// `/admin/` needs scope `admin`; everything else is public: the table of the
/// issue's Jetty finding.
fn admin_and_public(c: &mut RawConfig) {
    c.routes = vec![
        RawRoute {
            require_scopes: Some(vec!["admin".into()]),
            ..RawRoute::new("/admin/")
        },
        RawRoute::public("/"),
    ];
}

/// `admin.example.com` needs scope `admin`, `www.example.com` is public, and
/// any other host gets the default (a token, no scope).
fn by_host(c: &mut RawConfig) {
    c.routes = vec![
        RawRoute {
            host: "admin.example.com".into(),
            require_scopes: Some(vec!["admin".into()]),
            ..RawRoute::new("/")
        },
        RawRoute {
            host: "www.example.com".into(),
            ..RawRoute::public("/")
        },
    ];
}

/// One raw HTTP/1.1 request (closing the connection), its status and the
/// parsed answer.
async fn raw(addr: SocketAddr, head: &str) -> RawResp {
    let bytes = raw_exchange(addr, head.as_bytes()).await;
    parse_responses(&bytes, &[false])
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no response to {head:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
}

fn get_with_token(target: &str, token: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

async fn answer_admin(env: &Env, token: &str) {
    let body = json!({
        "active": true, "sub": "root", "client_id": "ops",
        "scope": "admin", "exp": env.now() + 3600,
    });
    env.answer(token, body, 1).await;
}

// ---------------------------------------------------------------------------
// Item 3: path spellings
// ---------------------------------------------------------------------------

/// Each of these reached the public route (so the upstream, with a read token
/// or none) on the old main, where Jetty, Tomcat, IIS or a double-decoding or
/// NFKC-normalising stack serves it as `/admin/...`.
const PATH_ATTACKS: &[&str] = &[
    "/admin;x/y",
    "/admin;jsessionid=1/users",
    "/public/..;/admin/x",
    "/public/..;x/admin/x",
    "/admin%3Bx/y",
    "/public/..%3B/admin/x",
    "/ADMIN/x",
    "/Admin/x",
    "/admin./x",
    "/admin%20/x",
    "/%2561dmin/x",
    "/%252561dmin/x",
    "/%EF%BD%81dmin/x",                   // full-width a
    "/%EF%BC%A1%EF%BC%A4MIN/x",           // full-width AD
    "/%EF%BC%8Fadmin/x",                  // full-width slash
    "/admin%EF%BC%8Fx",                   // full-width slash inside the segment
    "/public/%EF%BC%8E%EF%BC%8E/admin/x", // full-width dots
    "/adm%C4%B1n/x",                      // dotless i
    "/admin%00/x",                        // C-string upstreams stop at the NUL
    "/admin//../public/x", // WHATWG/RFC resolvers keep the empty segment: /admin/public/x
    "/%u0061dmin/x",       // IIS %u escape
    "/public/..%c0%af..%c0%afadmin/x", // overlong UTF-8 `/` (old decoders)
    // Review finding: NTFS stream suffixes, the directory `admin` to IIS.
    "/admin::$index_allocation/x",
    "/admin:$i30:$index_allocation/x",
    "/admin::$INDEX_ALLOCATION/x",
    "/admin.::$index_allocation/x",
];

#[tokio::test]
async fn should_refuse_path_spellings_that_another_server_reads_as_the_protected_prefix() {
    let env = Env::start_with(admin_and_public).await;
    // Refused before any token is looked at: no introspection at all.
    env.forbid_introspection().await;
    for path in PATH_ATTACKS {
        let r = raw(env.gate.addr, &get_with_token(path, "tok-read")).await;
        assert_eq!(
            r.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "invalid_request", "{path}");
        assert_eq!(env.upstream.hits(), 0, "{path} reached the upstream");
    }
}

#[tokio::test]
async fn should_keep_serving_legitimate_matrix_params_and_case() {
    let env = Env::start_with(admin_and_public).await;
    env.allow("tok-read", 1).await;
    answer_admin(&env, "tok-admin").await;
    // `;jsessionid` and matrix params that do not touch a route's prefix pass,
    // forwarded byte for byte.
    // Colons too (`name:verb` APIs, IPv6 in a segment), when no reading of
    // them crosses a route.
    for path in [
        "/x;jsessionid=A1",
        "/cars;color=red/2024",
        "/api/Users/ABC",
        "/v1/projects/p1:run",
        "/hosts/::1/x",
    ] {
        let r = raw(
            env.gate.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.echo().target, path);
    }
    // Below the protected prefix they keep the protected route: its token
    // checks apply.
    let r = raw(env.gate.addr, &get_with_token("/admin/x;v=1", "tok-read")).await;
    assert_eq!(r.status, 403, "read token on /admin/");
    let r = raw(env.gate.addr, &get_with_token("/admin/x;v=1", "tok-admin")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().target, "/admin/x;v=1");
    assert_eq!(env.upstream.hits(), 6);
}

// ---------------------------------------------------------------------------
// Item 4 (routing half): method games, against a real Flask/Werkzeug
// ---------------------------------------------------------------------------

/// tests/upstreams/flask_app.py on a free port; killed on drop.
struct Flask {
    child: Child,
    addr: SocketAddr,
}

impl Flask {
    fn start(python: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/flask_app.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the Flask upstream");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("Flask upstream's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Flask upstream printed {line:?}, not its port"));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The views that ran for requests that came through tokengate (`Via`).
    async fn views_through_gate(&self) -> Vec<Value> {
        let r = send(
            &http1_client(),
            request(Method::GET, &format!("{}/_views", self.url()))
                .body(empty())
                .unwrap(),
        )
        .await;
        let all: Vec<Value> = serde_json::from_slice(&r.body).expect("Flask's /_views");
        all.into_iter()
            .filter(|v| {
                v["via"]
                    .as_str()
                    .is_some_and(|via| via.contains("tokengate"))
            })
            .collect()
    }
}

impl Drop for Flask {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flask() -> Option<Flask> {
    python_with(&["flask"]).map(|py| Flask::start(&py))
}

#[tokio::test]
async fn should_refuse_lower_case_delete_that_werkzeug_runs_as_the_delete_view() {
    const NAME: &str = "should_refuse_lower_case_delete_that_werkzeug_runs_as_the_delete_view";
    let Some(flask) = flask() else {
        return skip_for_missing(NAME, "python3 with the flask package (pip install flask)");
    };
    // What makes it an attack: Werkzeug runs the DELETE view for `delete`.
    let direct = raw(
        flask.addr,
        "delete /admin/users/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        direct.status, 200,
        "Werkzeug no longer upper-cases methods?"
    );
    assert_eq!(direct.body, b"deleted 7");

    let env = Env::start_with(|c| {
        c.upstream = flask.url();
        c.routes = vec![
            RawRoute {
                methods: vec!["DELETE".into()],
                require_scopes: Some(vec!["admin".into()]),
                ..RawRoute::new("/admin/")
            },
            RawRoute::public("/"),
        ];
    })
    .await;
    env.forbid_introspection().await;
    let upper = raw(
        env.gate.addr,
        "DELETE /admin/users/7 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(upper.status, 401, "the DELETE rule itself");
    for method in ["delete", "Delete", "dELETE"] {
        let r = raw(
            env.gate.addr,
            &format!(
                "{method} /admin/users/7 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(
            r.status,
            400,
            "{method}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "invalid_request");
    }
    assert_eq!(
        flask.views_through_gate().await,
        Vec::<Value>::new(),
        "the DELETE view ran without the admin scope"
    );
}

#[tokio::test]
async fn should_route_head_as_get_so_a_get_only_rule_covers_the_view_head_runs() {
    const NAME: &str = "should_route_head_as_get_so_a_get_only_rule_covers_the_view_head_runs";
    let Some(flask) = flask() else {
        return skip_for_missing(NAME, "python3 with the flask package (pip install flask)");
    };
    let env = Env::start_with(|c| {
        c.upstream = flask.url();
        c.routes = vec![
            RawRoute {
                methods: vec!["GET".into()],
                ..RawRoute::new("/reports/")
            },
            RawRoute::public("/"),
        ];
    })
    .await;
    env.allow("tok", 1).await;
    let head = |token: Option<&str>| {
        let mut b = request(Method::HEAD, &env.url("/reports/q1"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(empty()).unwrap()
    };
    let r = send(&env.http1, head(None)).await;
    // A HEAD answer has no body to check: the status and the challenge say it.
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.starts_with("Bearer")));
    assert_eq!(
        flask.views_through_gate().await,
        Vec::<Value>::new(),
        "HEAD ran the GET view without a token"
    );
    // A client with a token still gets its HEAD answered (by the GET view).
    let r = send(&env.http1, head(Some("tok"))).await;
    assert_eq!(r.status, 200);
    let views = flask.views_through_gate().await;
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(views[0]["view"], "report");
    assert_eq!(views[0]["method"], "HEAD");
}

// ---------------------------------------------------------------------------
// Item 7: host games
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_route_a_trailing_dot_host_as_the_host_and_forward_the_host_it_routed_on() {
    let env = Env::start_with(by_host).await;
    env.allow("tok-read", 1).await;
    answer_admin(&env, "tok-admin").await;
    let req = |host: &str, token: &str| {
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
    };
    for host in [
        "admin.example.com.",
        "ADMIN.Example.com.",
        "admin.example.com.:80",
    ] {
        let r = raw(env.gate.addr, &req(host, "tok-read")).await;
        assert_eq!(r.status, 403, "{host}: a read token passed the admin host");
    }
    assert_eq!(env.upstream.hits(), 0);
    // The upstream is told the host we routed on, not the spelling.
    let r = raw(env.gate.addr, &req("ADMIN.example.com.:8443", "tok-admin")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echo().header("x-forwarded-host"),
        Some("admin.example.com:8443")
    );
}

#[tokio::test]
async fn should_400_two_host_fields_and_an_absolute_form_target_that_disagrees_with_host() {
    let env = Env::start_with(by_host).await;
    env.forbid_introspection().await;
    for head in [
        "GET /x HTTP/1.1\r\nHost: www.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: www.example.com\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        "GET http://admin.example.com/x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        "GET http://admin.example.com/x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: www.example.com, admin.example.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: admin%2eexample.com\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw(env.gate.addr, head).await;
        assert_eq!(r.status, 400, "{head:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "invalid_request");
    }
    assert_eq!(env.upstream.hits(), 0);
    // An absolute-form target that agrees with Host is fine.
    let r = raw(
        env.gate.addr,
        "GET http://WWW.example.com:80/x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().target, "/x");
}

#[tokio::test]
async fn should_400_http2_authority_that_disagrees_with_host() {
    let env = Env::start_with(by_host).await;
    env.forbid_introspection().await;
    let stream = TcpStream::connect(env.gate.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut ask = |authority: &str, host: Option<&str>| {
        let mut b = Request::get(format!("http://{authority}/x"));
        if let Some(h) = host {
            b = b.header("host", h);
        }
        h2.send_request(b.body(empty()).unwrap())
    };
    let r = ask("admin.example.com", Some("www.example.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, ":authority admin, host www");
    let r = ask("www.example.com", Some("admin.example.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, ":authority www, host admin");
    // `:authority` alone picks the route.
    let r = ask("admin.example.com", None).await.unwrap();
    assert_eq!(r.status(), 401, ":authority admin");
    assert_eq!(env.upstream.hits(), 0);
    let r = ask("www.example.com", Some("www.example.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "agreeing :authority and host");
}

// ---------------------------------------------------------------------------
// Forward-auth: the original method, URI and host go through the same select
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_apply_the_same_spelling_rules_to_forward_auths_original_request() {
    let env = Env::start_with(|c| {
        c.mode = Mode::ForwardAuth;
        c.routes = vec![
            RawRoute {
                methods: vec!["DELETE".into()],
                require_scopes: Some(vec!["admin".into()]),
                ..RawRoute::new("/admin/")
            },
            RawRoute {
                methods: vec!["GET".into()],
                ..RawRoute::new("/reports/")
            },
            RawRoute {
                host: "admin.example.com".into(),
                require_scopes: Some(vec!["admin".into()]),
                ..RawRoute::new("/")
            },
            RawRoute::public("/"),
        ];
    })
    .await;
    env.forbid_introspection().await;
    let ask = |method: &str, uri: &str, host: &str| {
        let req = request(Method::GET, &env.url("/_auth"))
            .header("x-original-method", method)
            .header("x-original-uri", uri)
            .header("x-forwarded-host", host)
            .body(empty())
            .unwrap();
        send(&env.http1, req)
    };
    let cases = [
        ("delete", "/admin/users/7", "www.example.com", 400),
        ("DELETE", "/admin;x/users/7", "www.example.com", 400),
        ("HEAD", "/reports/q1", "www.example.com", 401),
        ("GET", "/x", "admin.example.com.", 401),
        ("GET", "/x", "www.example.com", 200),
    ];
    for (method, uri, host, want) in cases {
        let r = ask(method, uri, host).await;
        assert_eq!(
            r.status.as_u16(),
            want,
            "{method} {uri} on {host}: {}",
            r.text()
        );
    }
}
