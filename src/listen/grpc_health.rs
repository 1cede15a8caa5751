//! `grpc.health.v1.Health` on the ext_authz port, answered from the same
//! checks as `/readyz` (`crate::ops::readiness`): NOT_SERVING while the AS
//! circuit breaker is open, before a required start-up probe succeeded, and
//! from the start of a shutdown. Written against tonic-health's generated
//! service rather than its `HealthReporter`, so that a `Check` reads the
//! readiness at that moment instead of a copy some task last pushed.

use crate::app::App;
use futures_util::{Stream, StreamExt as _};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The service names this port answers for: the whole server (`""`) and the
/// authorization service.
const SERVICES: [&str; 2] = ["", "envoy.service.auth.v3.Authorization"];

/// How often a `Watch` stream looks at the readiness again (it has no events).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub(super) fn service(app: Arc<App>) -> HealthServer<ReadinessHealth> {
    HealthServer::new(ReadinessHealth { app })
}

pub(super) struct ReadinessHealth {
    app: Arc<App>,
}

fn status(app: &App) -> ServingStatus {
    match app.readiness.check() {
        Ok(()) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if !SERVICES.contains(&request.get_ref().service.as_str()) {
            return Err(tonic::Status::not_found("unknown service"));
        }
        Ok(tonic::Response::new(response(status(&self.app))))
    }

    type WatchStream = WatchStream;

    /// The current status at once, then each change. The stream ends after
    /// NOT_SERVING at shutdown, so that it does not hold up the drain.
    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        if !SERVICES.contains(&request.get_ref().service.as_str()) {
            // The protocol: SERVICE_UNKNOWN, and the call stays open; no
            // service is ever added to this port, so there is nothing more to say.
            let unknown = response(ServingStatus::ServiceUnknown);
            let stream = futures_util::stream::once(async move { Ok(unknown) })
                .chain(futures_util::stream::pending());
            return Ok(tonic::Response::new(Box::pin(stream)));
        }
        let app = self.app.clone();
        // State: (last status sent, done).
        let stream = futures_util::stream::unfold((None, false), move |(last, done)| {
            let app = app.clone();
            async move {
                if done {
                    return None;
                }
                let mut first = last.is_none();
                loop {
                    if !first {
                        tokio::time::sleep(WATCH_INTERVAL).await;
                    }
                    first = false;
                    let now = status(&app);
                    if Some(now) != last {
                        let done = app.readiness.is_shutting_down();
                        return Some((Ok(response(now)), (Some(now), done)));
                    }
                    if app.readiness.is_shutting_down() {
                        return None;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
