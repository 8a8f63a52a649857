//! The operator HTTP endpoint every process serves: `/metrics` (Prometheus text
//! format), `/health` (the process is alive) and `/ready` (it is serving: 200, or
//! 503 with the reason). Also the metrics of the process itself (its runtime's
//! worker threads).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{register_int_gauge, Encoder, IntGauge, TextEncoder};

/// Tokio worker threads of this process (`--worker-threads`).
static WORKER_THREADS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_runtime_worker_threads", "Tokio worker threads of this process").expect("register")
});

/// Answers whether the process is ready, and if not why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves the operator endpoints in the background; returns the
/// bound address.
pub async fn serve(addr: SocketAddr, ready: Readiness) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP on {addr}"))?;
    let bound = listener.local_addr()?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    WORKER_THREADS.set(i64::try_from(workers).unwrap_or(i64::MAX));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics() -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let mut out = Vec::new();
    let encoded = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    match encoded {
        Ok(()) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], out),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

/// Latency buckets in seconds, 100 µs to 10 s: covers a local fsync and a slow
/// election alike.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
