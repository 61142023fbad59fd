//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /admin/reload`, and the self-protection API
//! (`/admin/bans[/{addr}]`: list, explain, lift; `/admin/identities[/{id}]`: list blocked, lift). It binds to
//! loopback by default because it is unauthenticated.

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
            let p = proxy.clone();
            // Map reads are syscalls; keep them off the reactor.
            let _ = tokio::task::spawn_blocking(move || p.risk.export_kernel_metrics(&p.metrics)).await;
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
        (method, path) if path == "/admin/bans" || path.starts_with("/admin/bans/") => bans(
            proxy,
            method,
            path.trim_start_matches("/admin/bans").trim_start_matches('/'),
        ),
        (method, path) if path == "/admin/identities" || path.starts_with("/admin/identities/") => {
            identities(
                proxy,
                method,
                path.trim_start_matches("/admin/identities")
                    .trim_start_matches('/'),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not_found"}"#.into(),
        ),
    }
}

/// `GET /admin/bans`, `GET /admin/bans/{addr}` (why it is banned), `DELETE /admin/bans/{addr}` (lift).
fn bans(proxy: &Proxy, method: &Method, addr: &str) -> Response<ProxyBody> {
    let result = match (method, addr) {
        (&Method::GET, "") => proxy.risk.bans().map(|b| serde_json::json!(b)),
        (_, "") => return not_allowed(),
        (m, a) => {
            let Ok(ip) = crate::addr::parse_addr(a) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": "invalid address" }),
                );
            };
            match *m {
                Method::GET => proxy.risk.explain(ip).map(|e| serde_json::json!(e)),
                Method::DELETE => proxy
                    .risk
                    .lift(ip)
                    .map(|lifted| serde_json::json!({ "lifted": lifted })),
                _ => return not_allowed(),
            }
        }
    };
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

/// `GET /admin/identities` (blocked ones), `DELETE /admin/identities/{identity}` (lift the block).
fn identities(proxy: &Proxy, method: &Method, identity: &str) -> Response<ProxyBody> {
    match (method, identity) {
        (&Method::GET, "") => json(
            StatusCode::OK,
            &serde_json::json!(proxy.risk.blocked_identities()),
        ),
        (&Method::DELETE, id) if !id.is_empty() => {
            let id = percent_decode(id);
            json(
                StatusCode::OK,
                &serde_json::json!({ "lifted": proxy.risk.unblock_identity(&id) }),
            )
        }
        _ => not_allowed(),
    }
}

/// Identities hold `:` and `/` (`jwt:https://issuer:sub`), so clients percent-encode them in the path.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_allowed() -> Response<ProxyBody> {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({ "error": "method_not_allowed" }),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    reply(status, "application/json", value.to_string())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
