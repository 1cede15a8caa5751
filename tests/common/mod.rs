//! Test harness: a real tokengate (`tokengate::run` on 127.0.0.1:0) between a fake
//! authorization server (wiremock) and a real hyper upstream, reached through real
//! sockets (hyper-util HTTP/1.1 and h2c clients, or raw TCP for exact bytes).
//!
//! Every test builds its own [`Env`], so tests run in parallel without sharing
//! ports, counters or caches.
//!
//! One file per thing it fakes or drives: `gate` (tokengate itself: `Gate`,
//! `Env`, `base_config`, the fake AS's mocks), `upstream` (a real hyper
//! upstream), `grpc` (an h2c upstream with trailers), `client` (hyper clients,
//! `Resp`), `raw` (exact bytes over TCP), `tls` (a test CA), `redis_server` (a
//! real redis-server), `dpop` (DPoP keys and proofs), `oidc` (the real
//! oidc-provider AS), `jwt_as` (the same, issuing JWT access tokens),
//! `binary` (the real `tokengate` binary), `logs` (a global captured
//! subscriber), `metrics` (the Prometheus text parser), `memory` (RSS),
//! `programs` (skipping when an external program is missing).
// `allow`, not `expect`: every test binary compiles this module and uses a
// different part of it, so the lint fires in some binaries and not in others.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokengate::clock::{Clock, ManualClock};
use tokengate::config::{RawConfig, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

mod binary;
mod client;
mod dpop;
mod gate;
mod grpc;
mod jwt_as;
mod logs;
mod memory;
mod metrics;
mod oidc;
mod otlp;
mod programs;
mod raw;
mod redis_server;
mod tls;
mod upstream;

#[allow(unused_imports)] // each test binary uses a different part
pub use binary::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use client::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use dpop::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use gate::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use grpc::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use jwt_as::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use logs::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use memory::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use metrics::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use oidc::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use otlp::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use programs::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use raw::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use redis_server::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use tls::*;
#[allow(unused_imports)] // each test binary uses a different part
pub use upstream::*;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What our test clients send.
pub type ClientBody = BoxBody<Bytes, BoxError>;
pub type TestClient = Client<HttpConnector, ClientBody>;

pub const CLIENT_ID: &str = "tokengate";
pub const CLIENT_SECRET: &str = "s3cret";
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";

/// 64 KiB of filler, `'static` so bodies can be built from it without copying.
pub static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
