//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `POST /admin/reload`. It binds to loopback by
//! default because it is unauthenticated.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
};

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::{
    Proxy,
    body::{ProxyBody, full},
};

/// Serves admin requests until the proxy shuts down.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = proxy.shutdown.cancelled() => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc_proxy = proxy.clone();
            let service = service_fn(move |req| {
                let proxy = svc_proxy.clone();
                async move { Ok::<_, Infallible>(handle(&proxy, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

async fn handle(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            proxy
                .metrics
                .open_connections
                .set(i64::try_from(proxy.connections.total()).unwrap_or(i64::MAX));
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                proxy.metrics.encode(),
            )
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if proxy.ready.load(Ordering::Relaxed) && !proxy.shutdown.is_cancelled() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        (&Method::POST, "/admin/reload") => {
            let p = proxy.clone();
            let result = tokio::task::spawn_blocking(move || p.reload()).await;
            let (status, body) = match result {
                Ok(Ok(generation)) => (
                    StatusCode::OK,
                    serde_json::json!({ "reloaded": true, "generation": generation }),
                ),
                // The admin listener is local and trusted: the operator needs the reason.
                Ok(Err(e)) => (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "reloaded": false, "error": e.to_string() }),
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({ "reloaded": false, "error": format!("reload task failed: {e}") }),
                ),
            };
            reply(status, "application/json", body.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not_found"}"#.into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
