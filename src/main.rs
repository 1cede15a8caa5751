#![forbid(unsafe_code)]
//! The `tokengate` binary: parse arguments, load config, init tracing, bind, and
//! call the same `tokengate::run` the integration tests use.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// mimalloc instead of glibc malloc: no per-block header and finer size
/// classes, which is most of the RSS of a full token cache (millions of small
/// blocks; BENCHMARKS.md, "Memory per cached token"). `bench-tools mem` uses
/// the same allocator so that its numbers are this binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "OAuth 2.0 token-introspection reverse proxy",
    after_help = "\
Environment:
  TOKENGATE_CONFIG    the config file, like --config
  TOKENGATE_*         any setting; overrides the file. Nested keys use a double
                      underscore: TOKENGATE_LISTEN=0.0.0.0:8080,
                      TOKENGATE_INTROSPECTION__CLIENT_SECRET=...,
                      TOKENGATE_CACHE__MAX_TTL=5m
  RUST_LOG            log level/filter (default: info), e.g. RUST_LOG=debug

Sources, later wins: built-in defaults, the config file, TOKENGATE_* variables.
Unknown keys and unknown TOKENGATE_* variables are errors."
)]
struct Cli {
    /// TOML config file (settings in TOKENGATE_* env override it).
    #[arg(short = 'c', long, env = "TOKENGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings (secrets
    /// redacted), and exit 0 (valid) or 1 (invalid).
    #[arg(long)]
    check_config: bool,
    /// With --check-config: also call the introspection endpoint once (after
    /// discovery, if configured) with a throwaway token, to prove the URL and
    /// the client credentials (each issuer's); exit 1 with the reason if it fails.
    #[arg(long, requires = "check_config")]
    probe: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokengate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let raw = tokengate::config::load(cli.config.as_deref()).context("invalid configuration")?;
    let mut settings = raw.validate().context("invalid configuration")?;
    if cli.check_config {
        match print_check_config(&raw, &settings) {
            // `--check-config | head` closes the pipe early: not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.context("cannot write to stdout")?,
        }
        return if cli.probe {
            probe_once(settings)
        } else {
            Ok(())
        };
    }
    tokengate::install_crypto_provider();
    // The guard lives to the end of this function, after the runtime (declared
    // later, dropped first): its drop flushes the lines still queued for the
    // log writer thread, "tokengate stopped" included.
    let (log, _log_guard) = match tokengate::init_tracing(settings.log_format) {
        Some(logging) => (Some(logging.handle), Some(logging.guard)),
        None => (None, None),
    };
    for notice in &raw.notices {
        tracing::info!("{notice}");
    }
    let config_file = cli.config.clone();

    // One CPU (a 1-CPU container, or `taskset`): the multi-thread scheduler
    // would run one worker anyway, and pay for cross-thread wake-ups on
    // every task switch; the current-thread one does not. More CPUs: one
    // worker per CPU (tokio's default, which honours the affinity mask).
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        settings
            .introspection
            .resolve_endpoint(settings.discovery.as_ref())
            .await
            .context("introspection endpoint discovery failed")?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (set by `listen`)", settings.listen))?;
        let admin = match settings.admin.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (set by `admin.listen`)"))?,
            ),
            None => None,
        };
        let ext_authz = match settings.ext_authz.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (set by `ext_authz.listen`)"))?,
            ),
            None => None,
        };
        // Installed before "started" is logged: until a handler exists, SIGTERM
        // and SIGHUP kill the process outright (exit by signal, not 0).
        let shutdown = shutdown_signal()?;
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        // The bound addresses, not the configured ones: with port 0 only these
        // say where to connect.
        let bound = |l: &tokio::net::TcpListener| {
            l.local_addr().map_or_else(|_| "-".to_owned(), |a| a.to_string())
        };
        tracing::info!(
            listen = %bound(&listener),
            admin = %admin.as_ref().map_or_else(|| "off".to_owned(), bound),
            ext_authz = %ext_authz.as_ref().map_or_else(|| "off".to_owned(), bound),
            upstream = %format!("{}://{}{}", settings.upstream.scheme, settings.upstream.authority, settings.upstream.base_path),
            introspection = %settings.introspection.url.as_ref().map_or("-", |u| u.as_str()),
            issuers = settings.issuers.len() + 1,
            runtime = if one_cpu { "current-thread" } else { "multi-thread" },
            "tokengate started"
        );
        let mut app = tokengate::App::new(settings);
        if let Some(admin) = admin {
            app = app.with_admin_listener(admin);
        }
        if let Some(ext_authz) = ext_authz {
            app = app.with_ext_authz_listener(ext_authz);
        }
        let reload = app.reload_handle().with_log(log);
        let tls = app.tls_reloader();
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(hup, reload, tls, config_file));
        #[cfg(not(unix))]
        let _ = (reload, tls, config_file);
        tokengate::run(app, listener, shutdown).await;
        tracing::info!("tokengate stopped");
        Ok(())
    })
}

/// `--check-config --probe`: discovery (if configured), then one call of the
/// introspection endpoint, as the start-up probe makes it.
fn probe_once(mut settings: tokengate::config::Settings) -> anyhow::Result<()> {
    tokengate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        settings
            .introspection
            .resolve_endpoint(settings.discovery.as_ref())
            .await
            .context("introspection endpoint discovery failed")?;
        let introspector = tokengate::introspection::Introspector::new(&settings.introspection);
        let url = introspector.url();
        match introspector.probe().await {
            Ok(()) => {
                println!(
                    "# probe: {} answered; URL and client credentials work",
                    url.as_deref().unwrap_or("-")
                );
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "introspection probe failed: {}",
                    tokengate::introspection::probe_advice(&e, url.as_deref())
                ))
            }
        }
        // Each `[issuers.<name>]` too, with its own credentials; the first
        // failure is the answer, named by its issuer.
        for issuer in &mut settings.issuers {
            let i = &mut issuer.introspection;
            if let (None, Some(d)) = (&i.url, &issuer.discovery) {
                let url =
                    tokengate::introspection::discovery::discover(&d.issuer, i.timeout, &i.tls)
                        .await
                        .with_context(|| {
                            format!(
                                "issuer {}: introspection endpoint discovery failed",
                                issuer.name
                            )
                        })?;
                i.url = Some(url);
            }
            let introspector = tokengate::introspection::Introspector::new(i);
            let url = introspector.url();
            if let Err(e) = introspector.probe().await {
                return Err(anyhow::anyhow!(
                    "introspection probe of issuer {} failed: {}",
                    issuer.name,
                    tokengate::introspection::probe_advice(&e, url.as_deref())
                ));
            }
            println!(
                "# probe: issuer {}: {} answered; URL and client credentials work",
                issuer.name,
                url.as_deref().unwrap_or("-")
            );
        }
        Ok(())
    })
}

/// `--check-config`: the effective settings (secrets redacted) and the route table.
fn print_check_config(
    raw: &tokengate::config::RawConfig,
    settings: &tokengate::config::Settings,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# configuration is valid; effective settings (secrets redacted):"
    )?;
    write!(out, "{}", raw.to_redacted_toml())?;
    writeln!(out, "\n# route table (first match wins):")?;
    for line in settings.routes.to_string().lines() {
        writeln!(out, "#   {line}")?;
    }
    // Each authorization server: what a route's `issuer` picks. Never the
    // secret; the client id and the method say which credentials are used.
    writeln!(
        out,
        "\n# issuers (a route's `issuer` picks one; routes without it use \"default\"):"
    )?;
    let endpoint = |i: &tokengate::config::IntrospectionSettings,
                    d: Option<&tokengate::config::DiscoverySettings>| {
        match (&i.url, d) {
            (Some(u), _) => u.as_str().to_owned(),
            (None, Some(d)) => format!("(discovered from {})", d.issuer),
            (None, None) => "-".to_owned(),
        }
    };
    let auth = |i: &tokengate::config::IntrospectionSettings| {
        let method = match i.auth_method {
            tokengate::config::AuthMethod::ClientSecretBasic => "client_secret_basic",
            tokengate::config::AuthMethod::ClientSecretPost => "client_secret_post",
        };
        format!("auth={method} client_id={}", i.client_id)
    };
    // The default issuer's answers are not checked against an iss of its
    // own; `[policy] require_issuer` does that per route.
    writeln!(
        out,
        "#   {:<12} iss=(not checked) endpoint={} {}",
        tokengate::config::DEFAULT_ISSUER,
        endpoint(&settings.introspection, settings.discovery.as_ref()),
        auth(&settings.introspection),
    )?;
    if let Some(j) = &settings.jwt {
        writeln!(out, "#   {:<12} {}", "", j.summary())?;
    }
    for i in &settings.issuers {
        writeln!(
            out,
            "#   {:<12} iss={} endpoint={} {}",
            i.name,
            i.iss,
            endpoint(&i.introspection, i.discovery.as_ref()),
            auth(&i.introspection),
        )?;
        if let Some(j) = &i.jwt {
            writeln!(out, "#   {:<12} {}", "", j.summary())?;
        }
    }
    out.flush()
}

/// On every SIGHUP: re-reads the config file and the environment and applies
/// what can change at run time (see `tokengate::reload`). A bad config is
/// logged and changes nothing.
#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reload: tokengate::reload::ReloadHandle,
    tls: Option<tokengate::TlsReloader>,
    file: Option<PathBuf>,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        let reload = reload.clone();
        let tls = tls.clone();
        let file = file.clone();
        // Reading files and secrets blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(tls) = &tls {
                // `reload` logs success itself; a bad file keeps the running
                // certificate, which must be said loudly.
                if let Err(e) = tls.reload() {
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the running certificate");
                }
            }
            reload.reload_from(file.as_deref())
        })
        .await;
    }
}

/// Resolves on SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C). The
/// handlers are installed when this is called, not when the future is polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    })
}
