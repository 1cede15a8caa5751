#![forbid(unsafe_code)]
//! The `tokengate` binary: parse arguments, load config, init tracing, bind, and
//! call the same `tokengate::run` the integration tests use.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "OAuth 2.0 token-introspection reverse proxy"
)]
struct Cli {
    /// TOML config file (settings in TOKENGATE_* env override it).
    #[arg(long, env = "TOKENGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings (secrets
    /// redacted), and exit 0 (valid) or 1 (invalid).
    #[arg(long)]
    check_config: bool,
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
        println!("# configuration is valid; effective settings (secrets redacted):");
        print!("{}", raw.to_redacted_toml());
        println!("\n# route table (first match wins):");
        for line in settings.routes.to_string().lines() {
            println!("#   {line}");
        }
        return Ok(());
    }
    tokengate::install_crypto_provider();
    tokengate::init_tracing(settings.log_format);

    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        tokengate::discovery::resolve(&mut settings)
            .await
            .context("introspection endpoint discovery failed")?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        tracing::info!(
            listen = %settings.listen,
            upstream = %format!("{}://{}{}", settings.upstream.scheme, settings.upstream.authority, settings.upstream.base_path),
            introspection = %settings.introspection.url.as_ref().map_or("-", |u| u.as_str()),
            "tokengate started"
        );
        tokengate::run(tokengate::App::new(settings), listener, shutdown_signal()).await;
        tracing::info!("tokengate stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
