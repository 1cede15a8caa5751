//! tokengate itself.

use super::*;

/// A running tokengate. Dropping it resolves the shutdown future.
pub struct Gate {
    pub addr: SocketAddr,
    /// The admin listener (`None` for gates built with [`Gate::from_parts`]).
    pub admin: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub reload: Option<tokengate::reload::ReloadHandle>,
    pub readiness: Option<Arc<tokengate::Readiness>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The fleet layer (`[cache.shared]`), to purge and read counters directly.
    pub fleet: Option<Arc<tokengate::cache::fleet::Fleet>>,
}

impl Gate {
    /// Wraps a tokengate a test started itself (e.g. after discovery).
    pub fn from_parts(
        addr: SocketAddr,
        clock: Arc<ManualClock>,
        shutdown: oneshot::Sender<()>,
    ) -> Self {
        Self {
            addr,
            admin: None,
            clock,
            reload: None,
            readiness: None,
            shutdown: Some(shutdown),
            task: None,
            fleet: None,
        }
    }

    /// Starts `tokengate::run` with an admin listener on 127.0.0.1:0
    /// (whatever `admin.listen` says).
    pub async fn start(raw: &RawConfig) -> Self {
        tokengate::install_crypto_provider();
        let settings = raw.validate().expect("test config must validate");
        Self::start_settings(settings).await
    }

    /// Starts tokengate from validated settings (e.g. after keeping a handle
    /// such as the TLS reloader).
    pub async fn start_settings(settings: tokengate::config::Settings) -> Self {
        tokengate::install_crypto_provider();
        let clock = Arc::new(ManualClock::default());
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let app =
            tokengate::App::with_clock(settings, clock.clone()).with_admin_listener(admin_listener);
        let reload = app.reload_handle();
        let readiness = app.readiness().clone();
        let fleet = app.cache().fleet().cloned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tokengate::run(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin: Some(admin),
            clock,
            reload: Some(reload),
            readiness: Some(readiness),
            shutdown: Some(tx),
            task: Some(task),
            fleet,
        }
    }

    /// Resolves the shutdown future (what SIGTERM does in `main`).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until `tokengate::run` has returned (drain finished).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("tokengate::run did not return within 20s")
                .expect("tokengate::run panicked");
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("gate has no admin listener")
        )
    }

    pub fn reload(&self) -> &tokengate::reload::ReloadHandle {
        self.reload.as_ref().expect("gate has no reload handle")
    }
}

/// The base config every test starts from: our AS and upstream, small timeouts.
pub fn base_config(auth: &MockServer, upstream: &str) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.to_owned(),
        shutdown_timeout: Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = format!("{}{INTROSPECT_PATH}", auth.uri());
    raw.introspection.client_id = CLIENT_ID.into();
    raw.introspection.client_secret = Secret::new(CLIENT_SECRET);
    raw.introspection.timeout = Duration::from_secs(2);
    // Tests count AS calls exactly (`expect(n)`, `forbid_introspection`) and
    // mount only the tokens they use; the start-up probe has its own tests
    // (tests/probe.rs), which turn it on.
    raw.introspection.probe = tokengate::config::ProbeMode::Off;
    raw.resilience.upstream_timeout = Duration::from_secs(30);
    raw
}

/// One test's world: fake AS, real upstream, tokengate, and two clients.
pub struct Env {
    pub auth: MockServer,
    pub upstream: Upstream,
    pub gate: Gate,
    pub http1: TestClient,
    pub h2c: TestClient,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `configure` may change any setting of the base config.
    pub async fn start_with(configure: impl FnOnce(&mut RawConfig)) -> Self {
        let auth = MockServer::start().await;
        let upstream = Upstream::start().await;
        let mut raw = base_config(&auth, &upstream.url());
        configure(&mut raw);
        let gate = Gate::start(&raw).await;
        Self {
            auth,
            upstream,
            gate,
            http1: http1_client(),
            h2c: h2c_client(),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.gate.addr)
    }

    /// "Now" as tokengate's clock sees it, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.gate.clock.unix_secs()
    }

    pub fn advance(&self, by: Duration) {
        self.gate.clock.advance(by);
    }

    /// HTTP/1.1 GET with `Authorization: Bearer <token>`.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        let req = request(Method::GET, &self.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        send(&self.http1, req).await
    }

    /// HTTP/1.1 GET with the given `Authorization` values (none, one, or several).
    pub async fn get_with_auth(&self, path: &str, auth: &[&str]) -> Resp {
        let mut b = request(Method::GET, &self.url(path));
        for a in auth {
            b = b.header("authorization", *a);
        }
        send(&self.http1, b.body(empty()).unwrap()).await
    }

    /// Mounts an AS answer for `token` that must be asked for exactly `times` times.
    pub async fn answer(&self, token: &str, body: Value, times: u64) {
        introspection_of(token)
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(times)
            .mount(&self.auth)
            .await;
    }

    /// Mounts "active, sub alice, client app, scope read write, exp in an hour".
    pub async fn allow(&self, token: &str, times: u64) {
        let body = json!({
            "active": true, "sub": "alice", "client_id": "app",
            "scope": "read write", "exp": self.now() + 3600, "token_type": "Bearer",
        });
        self.answer(token, body, times).await;
    }

    /// Fails the test if the AS is called at all (verified when `auth` drops).
    pub async fn forbid_introspection(&self) {
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .named("no introspection call is allowed")
            .mount(&self.auth)
            .await;
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = request(Method::GET, &self.gate.admin_url(path))
            .body(empty())
            .unwrap();
        send(&admin_client(), req).await
    }

    /// `POST /purge` with `body` of `content_type`, and `Authorization: <auth>` if given.
    pub async fn purge(&self, content_type: &str, body: &str, auth: Option<&str>) -> Resp {
        let mut b = request(Method::POST, &self.gate.admin_url("/purge"))
            .header("content-type", content_type);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        send(&admin_client(), b.body(full(body.to_owned())).unwrap()).await
    }

    /// Scrapes `/metrics` and parses it strictly (see [`Scrape::parse`]).
    pub async fn scrape(&self) -> Scrape {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Scrape::parse(&r.text())
            .unwrap_or_else(|e| panic!("bad exposition format: {e}\n{}", r.text()))
    }

    /// Introspection calls that reached the fake AS so far.
    pub async fn introspections(&self) -> Vec<wiremock::Request> {
        self.auth.received_requests().await.unwrap_or_default()
    }
}

/// A mock for the introspection endpoint that matches only the given token.
pub fn introspection_of(token: &str) -> MockBuilder {
    let want = token.to_owned();
    Mock::given(method("POST"))
        .and(path(INTROSPECT_PATH))
        .and(move |r: &wiremock::Request| {
            form_value(&r.body, "token").as_deref() == Some(want.as_str())
        })
}

/// `application/x-www-form-urlencoded` body → value of `key`.
pub fn form_value(body: &[u8], key: &str) -> Option<String> {
    form_pairs(body)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A local address nothing listens on (bound, then released).
pub async fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
