//! An in-process OpenTelemetry collector: the OTLP/gRPC `TraceService`
//! (opentelemetry-proto's tonic server) on 127.0.0.1:0, keeping every span
//! it receives, flattened for assertions.

use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// One received span, with ids in hex and attribute values as strings.
#[derive(Clone, Debug)]
pub struct SpanSeen {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP `SpanKind` (2 server, 3 client).
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    /// The resource's attributes (`service.name`...).
    pub resource: Vec<(String, String)>,
    /// OTLP status code (2 = error).
    pub status_code: i32,
    /// The W3C `tracestate` the span was exported with.
    pub trace_state: String,
}

impl SpanSeen {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Everything a span carries as text: name, tracestate, attribute keys
    /// and values.
    pub fn all_text(&self) -> String {
        let mut s = format!("{} {}", self.name, self.trace_state);
        for (k, v) in self.attributes.iter().chain(&self.resource) {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

fn text(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| text(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    seen.push(SpanSeen {
                        name: s.name,
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        kind: s.kind,
                        attributes: text(&s.attributes),
                        resource: resource.clone(),
                        status_code: s.status.map(|st| st.code).unwrap_or_default(),
                        trace_state: s.trace_state,
                    });
                }
            }
        }
        let total = {
            let mut spans = self.spans.lock().unwrap();
            spans.extend(seen);
            spans.len()
        };
        self.count.send_replace(total);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector; stops when dropped.
pub struct OtlpSink {
    pub addr: SocketAddr,
    collector: Collector,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            collector,
            task,
        }
    }

    /// What `[tracing] otlp_endpoint` should say.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<SpanSeen> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// Waits (up to 20 s: a generous bound, not a timing assumption) until
    /// the spans received satisfy `done`, and returns them.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[SpanSeen]) -> bool) -> Vec<SpanSeen> {
        let mut rx = self.collector.count.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(|_| done(&self.spans())),
        )
        .await;
        let spans = self.spans();
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the collector never saw {what}; it has: {spans:#?}"
        );
        spans
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
