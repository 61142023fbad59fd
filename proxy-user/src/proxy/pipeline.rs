//! The life of one request, as named phases over a per-request [`RequestCtx`] (after Pingora's phases):
//!
//! 1. [`request_filter`]: limits, and removal of headers a client must never set (the subject header).
//! 2. [`route`]: host, longest path prefix, method.
//! 3. [`auth`]: the route's [`AuthMode`], checked by the generation's `crate::identity::Authenticator`.
//! 4. [`inspect`]: the payload inspector over the head and a bounded body prefix.
//! 5. [`upstream_peer`]: round-robin over the route's healthy endpoints.
//! 6. [`upstream_request`]: header rewriting and the exchange, with timeouts and passive ejection.
//! 7. [`response`]: hop-by-hop removal, upgrade tunnelling, the request id.
//! 8. [`log`]: one access line and the metrics, when the response body ends or is dropped.
//!
//! The connection filter (the phase before all of these) sits in `server.rs`, before TLS.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
    header::{self, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE},
    uri::Authority,
};
use http_body_util::{BodyExt as _, Either, Limited};
use hyper_util::rt::TokioIo;

use super::{
    Proxy, RequestId,
    body::{self, BoxError, Counted, Finishing, ProxyBody},
    connections::ConnectionGuard,
    generation::Generation,
    h1::{self, HOP_BY_HOP, HOP_CONNECTION, HOP_UPGRADE, HeaderText, hop_by_hop_index},
    pool::{UpstreamBody, UpstreamResponse},
    router::{Route, RouteMatch},
    upstream::Endpoint,
};
use crate::{
    event::{EventKind, Identity, SecurityEvent, Severity},
    identity::{RouteAuth, config::AuthMode, failure_name},
    inspect::RequestView,
    logging::{AccessLine, Verdict},
    metrics::{AuthFailureLabels, UpstreamErrorLabels},
    risk::{Context as RiskContext, Signal, enforce::Refusal},
};

/// What the proxy knows about the client connection a request came on. It also holds the connection's place in
/// the registry, so a WebSocket tunnel (which outlives hyper's connection) stays registered, counted and
/// closable by `close_source` until the tunnel ends.
pub struct ConnInfo {
    /// The proxy serving the connection. Requests reach it through here: a request's log then holds the
    /// connection (a reference count only its own worker touches) instead of another count on the proxy, which
    /// every worker would contend for.
    pub proxy: Arc<Proxy>,
    pub peer: SocketAddr,
    /// The peer's address in the one spelling decisions use (IPv4-mapped IPv6 as IPv4).
    pub source: IpAddr,
    /// `source` as text, formatted once per connection rather than once per request.
    source_header: HeaderValue,
    pub tls: bool,
    pub registration: ConnectionGuard,
}

impl ConnInfo {
    #[must_use]
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr, tls: bool, registration: ConnectionGuard) -> Self {
        let source = crate::addr::canonical(peer.ip());
        Self {
            proxy,
            peer,
            source,
            // An address's text is always a valid header value.
            source_header: HeaderValue::try_from(source.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            tls,
            registration,
        }
    }
}

/// Per-request state the phases share and the log phase reports.
pub struct RequestCtx {
    /// Sent upstream and back to the client, logged, and quoted in error bodies.
    id: RequestId,
    /// The client address as `X-Forwarded-For` carries it.
    source_header: HeaderValue,
    pub started: Instant,
    pub source: IpAddr,
    pub tls: bool,
    pub method: Method,
    /// For the log's path: a clone shares the request's bytes rather than copying them.
    pub uri: http::Uri,
    /// The matched route's [`Route::index`] in the request's generation (which the phases are given beside the
    /// context): an index rather than a shared label, whose reference count every worker would contend for.
    pub route: Option<usize>,
    /// The upstream phase was reached (the route's upstream is the request's).
    pub upstream_chosen: bool,
    pub endpoint: Option<SocketAddr>,
    pub identity: Option<Identity>,
    /// `allow`, or why the proxy answered itself (`deny_auth`, `block_inspect`, `limit`, `error`, ...).
    pub verdict: Verdict,
    /// The request body's bytes as they pass; `None` for a request without a body (most), which so costs no
    /// allocation.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// The body length the client declared (`Content-Length`, or an exact size hint), read once by the request
    /// filter.
    pub declared_body: Option<u64>,
    /// Set by the response phase (see [`Answer::raw_headers`]).
    raw_headers: Option<h1::RawHeaders>,
    /// Read by the request filter.
    names: NamesSeen,
}

/// The client's header names as one pass in the request filter found them: the later phases ask these instead
/// of the map, where every question is a hash and a probe. The phases after the filter add only the subject
/// header (auth) and, after reading these, the upgrade pair (the upstream request), so the facts stay true.
#[derive(Debug, Default, Clone, Copy)]
struct NamesSeen {
    /// Which of [`HOP_BY_HOP`] are there.
    hop_by_hop: [bool; HOP_BY_HOP.len()],
    host: bool,
    /// A header named as the proxy's subject header: a forgery.
    subject: bool,
    /// `X-Forwarded-For`, `X-Forwarded-Proto` or the request id header: claims the proxy replaces.
    forwarding: bool,
}

impl NamesSeen {
    fn of(headers: &HeaderMap, generation: &Generation) -> Self {
        let mut seen = Self::default();
        for name in headers.keys() {
            if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
                seen.hop_by_hop[i] = true;
            } else if name == HOST {
                seen.host = true;
            } else if *name == generation.subject_header {
                seen.subject = true;
            } else if *name == X_FORWARDED_FOR
                || *name == X_FORWARDED_PROTO
                || *name == generation.request_id_header
            {
                seen.forwarding = true;
            }
        }
        seen
    }
}

impl RequestCtx {
    /// The request id as text.
    #[must_use]
    pub fn id(&self) -> &str {
        self.id.as_str()
    }
}

/// A refusal or failure the proxy answers itself. The body says only the class of problem and the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    TooManyRequests,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
}

impl Reject {
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyRequests => "too_many_requests",
            Self::BadGateway => "bad_gateway",
            Self::ServiceUnavailable => "service_unavailable",
            Self::GatewayTimeout => "gateway_timeout",
        }
    }
}

/// A request body as the server sides deliver it: hyper's `Incoming`, or nothing (the HTTP/1.1 fast path).
pub trait ClientBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static>
    ClientBody for B
{
}

/// A request's answer, as the pipeline hands it to the server side that writes it. The headers the proxy adds
/// last and the upstream's unparsed ones travel beside the response, so that a writer of HTTP/1.1 puts them on
/// the wire without building a header map for them.
pub struct Answer {
    pub response: Response<ProxyBody>,
    /// The request id header.
    pub request_id: (HeaderName, RequestId),
    /// The upstream's headers as it wrote them (see [`h1::RawHeaders`]).
    pub raw_headers: Option<h1::RawHeaders>,
}

impl Answer {
    /// The answer as one `Response`, for a writer that takes header maps only (hyper's).
    #[must_use]
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = self.response;
        if let Some(raw) = &self.raw_headers {
            h1::materialize(response.headers_mut(), raw);
        }
        let (name, id) = self.request_id;
        response.headers_mut().insert(name, id.header_value());
        response
    }
}

/// Answers one request; never fails (every failure becomes a response).
pub async fn handle<B: ClientBody>(conn: Arc<ConnInfo>, req: Request<B>) -> Answer {
    let proxy = &conn.proxy;
    // The one reference count the request takes on the generation, which every worker shares: the phases borrow
    // it, and the log phase holds it until the response body is done.
    let generation = proxy.current.load_full();
    // Boxed: it travels from here into the response body's log callback, and a pointer moves for less than
    // its few hundred bytes at every step.
    let mut ctx = Box::new(RequestCtx {
        id: proxy.next_request_id(),
        source_header: conn.source_header.clone(),
        started: Instant::now(),
        source: conn.source,
        tls: conn.tls,
        method: req.method().clone(),
        uri: req.uri().clone(),
        route: None,
        upstream_chosen: false,
        endpoint: None,
        identity: None,
        verdict: Verdict::Allow,
        bytes_in: None,
        declared_body: None,
        raw_headers: None,
        names: NamesSeen::default(),
    });
    let resp = match run_phases(&generation, &conn, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(reject) => {
            if ctx.verdict == Verdict::Allow {
                ctx.verdict = Verdict::Error;
            }
            error_response(reject, ctx.id()).map(Either::Right)
        }
    };
    let raw_headers = ctx.raw_headers.take();
    let request_id = (generation.request_id_header.clone(), ctx.id);
    Answer {
        response: finish(conn, generation, ctx, resp),
        request_id,
        raw_headers,
    }
}

async fn run_phases<B: ClientBody>(
    generation: &Generation,
    conn: &Arc<ConnInfo>,
    ctx: &mut RequestCtx,
    mut req: Request<B>,
) -> Result<Outcome, Reject> {
    let proxy = &conn.proxy;
    request_filter(ctx, generation, &mut req)?;
    let route = route(ctx, generation, &req)?;
    // The optional phases' futures are boxed, and made only when the route needs them: inline, their size (the
    // token check, the body buffering) would be copied with this future on every request, needed or not.
    if route.auth != AuthMode::None {
        Box::pin(auth(proxy, generation, ctx, route, req.headers_mut())).await?;
    }
    rate(proxy, ctx, route)?;
    let upgrade = is_upgrade(req.headers(), &ctx.names);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let body = request_body(ctx, generation, incoming);
    let body = if route.policy.is_some() {
        Box::pin(inspect(proxy, generation, ctx, route, &parts, body)).await?
    } else {
        body
    };
    let (endpoint_idx, endpoint) = upstream_peer(ctx, route)?;
    let upstream_resp = upstream_request(
        proxy,
        generation,
        ctx,
        route,
        &mut parts,
        body,
        upgrade,
        (endpoint_idx, endpoint),
    )
    .await?;
    Ok(response(ctx, conn, upstream_resp, client_upgrade))
}

/// What the phases answer with: the upstream's response, or one the proxy made (a tunnel's 101, a refusal).
type Outcome = Response<Either<Box<UpstreamBody>, ProxyBody>>;

/// Phase 1: limits that need no route, and headers no client may set.
fn request_filter<B: ClientBody>(
    ctx: &mut RequestCtx,
    generation: &Generation,
    req: &mut Request<B>,
) -> Result<(), Reject> {
    let limits = generation.limits();
    let declared = req.body().size_hint().exact().or_else(|| {
        req.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    });
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        ctx.verdict = Verdict::Limit;
        return Err(Reject::PayloadTooLarge);
    }
    ctx.declared_body = declared;
    ctx.names = NamesSeen::of(req.headers(), generation);
    // A forged subject header would impersonate whoever the upstream trusts it to name.
    if ctx.names.subject {
        req.headers_mut().remove(&generation.subject_header);
    }
    Ok(())
}

/// Phase 3b: the caller's rate against the route's learned normal, and identity blocks.
fn rate(proxy: &Proxy, ctx: &mut RequestCtx, route: &Route) -> Result<(), Reject> {
    if let Some(identity) = &ctx.identity
        && proxy.risk.identity_refused(identity, ctx.started)
    {
        ctx.verdict = Verdict::BlockIdentity;
        return Err(Reject::Forbidden);
    }
    match proxy.risk.observe(
        &risk_context(ctx, Some(&route.label), Some(route)),
        Signal::Request,
        ctx.started,
        &proxy.metrics,
    ) {
        None => Ok(()),
        Some(Refusal::Forbidden) => {
            ctx.verdict = Verdict::BlockRisk;
            Err(Reject::Forbidden)
        }
        Some(Refusal::TooManyRequests) => {
            ctx.verdict = Verdict::BlockRate;
            Err(Reject::TooManyRequests)
        }
    }
}

/// Phase 2.
fn route<'g, B>(
    ctx: &mut RequestCtx,
    generation: &'g Generation,
    req: &Request<B>,
) -> Result<&'g Route, Reject> {
    // Parsing the host costs more than the rest of routing; most configurations never look at it.
    let host = if generation.router.has_host_routes() {
        request_host(req)
    } else {
        None
    };
    match generation
        .router
        .find(host.as_deref(), req.uri().path(), req.method())
    {
        RouteMatch::Found(r) => {
            ctx.route = Some(r.index);
            Ok(r)
        }
        RouteMatch::MethodNotAllowed(r) => {
            ctx.route = Some(r.index);
            Err(Reject::MethodNotAllowed)
        }
        RouteMatch::NotFound => Err(Reject::NotFound),
    }
}

/// The request's host without port: the URI authority (HTTP/2, absolute-form) or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(h.to_ascii_lowercase());
    }
    let raw = req.headers().get(HOST)?.to_str().ok()?;
    let authority: Authority = raw.parse().ok()?;
    Some(authority.host().to_ascii_lowercase())
}

/// Phase 3: the route's credential check. A verified caller's subject goes upstream in the subject header
/// (any client-sent one was removed in phase 1); a refusal becomes a security event and a 401/403 whose body
/// says only the class of problem.
async fn auth(
    proxy: &Proxy,
    generation: &Generation,
    ctx: &mut RequestCtx,
    route: &Route,
    headers: &mut HeaderMap,
) -> Result<(), Reject> {
    if route.auth == AuthMode::None {
        return Ok(());
    }
    let check = RouteAuth {
        mode: route.auth,
        route: &route.label,
        scopes: &route.scopes,
    };
    match generation.authenticator.authenticate(headers, &check).await {
        Ok(None) => Ok(()),
        Ok(Some(identity)) => {
            // The identity module only verifies subjects that fit in a header; refuse rather than forward
            // without one should that ever change.
            let value = HeaderValue::from_bytes(identity.subject.as_bytes()).map_err(|_| {
                tracing::error!(
                    request_id = ctx.id(),
                    "verified subject is not a valid header value"
                );
                ctx.verdict = Verdict::Error;
                Reject::Unauthorized
            })?;
            headers.insert(generation.subject_header.clone(), value);
            ctx.identity = Some(identity);
            Ok(())
        }
        Err(rejection) => {
            ctx.verdict = Verdict::DenyAuth;
            proxy
                .metrics
                .auth_failures
                .get_or_create(&AuthFailureLabels {
                    kind: failure_name(rejection.event_kind).into(),
                })
                .inc();
            let event = rejection.to_event(
                ctx.source,
                Some(route.label.to_string()),
                Some(ctx.id().to_owned()),
            );
            crate::logging::security_event(&event);
            ctx.identity = rejection.identity;
            // Token tampering and credential guessing raise the source's (and a known identity's) risk; the
            // refusal is 401/403 either way.
            let _ = risk_event(proxy, ctx, route, &event);
            Err(if rejection.status == StatusCode::FORBIDDEN {
                Reject::Forbidden
            } else {
                Reject::Unauthorized
            })
        }
    }
}

/// The client's body, bounded by `max_body_bytes` (a chunked body that grows past it fails the upstream
/// exchange, which [`upstream_request`] turns into 413) and counted for the log.
fn request_body<B: ClientBody>(ctx: &mut RequestCtx, generation: &Generation, incoming: B) -> ProxyBody {
    if incoming.is_end_stream() {
        return body::empty();
    }
    let max = usize::try_from(generation.limits().max_body_bytes).unwrap_or(usize::MAX);
    let count = ctx.bytes_in.insert(Arc::new(AtomicU64::new(0))).clone();
    Limited::new(Counted::new(incoming, count), max).boxed()
}

/// Phase 4. Runs only when `[inspection]` is configured: buffers at most the policy's body window (and
/// `limits.inspect_body_bytes`) and hands the head and that prefix to the inspector; the rest streams past.
async fn inspect(
    proxy: &Proxy,
    generation: &Generation,
    ctx: &mut RequestCtx,
    route: &Route,
    parts: &http::request::Parts,
    body: ProxyBody,
) -> Result<ProxyBody, Reject> {
    let Some(policy) = route.policy.clone() else {
        return Ok(body);
    };
    let limit = generation
        .limits()
        .inspect_body_bytes
        .min(policy.max_body_bytes());
    let (prefix, body) = body::buffer_prefix(body, limit)
        .await
        .map_err(|e| client_body_error(ctx, &*e))?;
    let truncated = ctx.declared_body.is_some_and(|n| n > prefix.len() as u64) || prefix.len() >= limit;
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let view = RequestView {
        method: parts.method.as_str(),
        target,
        headers: &headers,
        body: &prefix,
        body_truncated: truncated,
    };
    let verdict = crate::inspect::inspect(&view, &policy);
    let Some(category) = verdict.category() else {
        return Ok(body);
    };
    let event = SecurityEvent {
        at: std::time::SystemTime::now(),
        source: ctx.source,
        identity: ctx.identity.clone(),
        route: Some(route.label.to_string()),
        request_id: Some(ctx.id().to_owned()),
        kind: EventKind::Attack(category),
        severity: verdict.severity().unwrap_or(Severity::Notice),
        evidence: verdict.findings.iter().map(|f| f.evidence.clone()).collect(),
    };
    crate::logging::security_event(&event);
    // Only findings that took the request over the threshold feed the risk engine: what the policy judges
    // harmless must not ban anyone either.
    let refusal = if verdict.over_threshold {
        risk_event(proxy, ctx, route, &event)
    } else {
        None
    };
    if verdict.blocked || refusal.is_some() {
        ctx.verdict = Verdict::BlockInspect;
        return Err(Reject::Forbidden);
    }
    if verdict.over_threshold {
        ctx.verdict = Verdict::DetectInspect;
    }
    Ok(body)
}

/// Feeds a security event to the risk engine; returns the refusal it calls for.
fn risk_event(proxy: &Proxy, ctx: &RequestCtx, route: &Route, event: &SecurityEvent) -> Option<Refusal> {
    let rctx = risk_context(ctx, Some(&route.label), Some(route));
    proxy
        .risk
        .observe(&rctx, Signal::Event(event), Instant::now(), &proxy.metrics)
}

/// `label` names the matched route; `route` weighs the signal by its sensitivity (`None` for a signal about the
/// source rather than the route).
fn risk_context<'a>(ctx: &'a RequestCtx, label: Option<&'a str>, route: Option<&Route>) -> RiskContext<'a> {
    RiskContext {
        source: ctx.source,
        identity: ctx.identity.as_ref(),
        route: label,
        sensitivity: route.map_or(1.0, |r| r.sensitivity),
        request_id: Some(ctx.id()),
    }
}

fn client_body_error(ctx: &mut RequestCtx, e: &(dyn std::error::Error + 'static)) -> Reject {
    if is_length_limit(e) {
        ctx.verdict = Verdict::Limit;
        Reject::PayloadTooLarge
    } else {
        ctx.verdict = Verdict::ClientError;
        Reject::BadRequest
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Phase 5.
fn upstream_peer<'r>(ctx: &mut RequestCtx, route: &'r Route) -> Result<(usize, &'r Endpoint), Reject> {
    ctx.upstream_chosen = true;
    let (idx, endpoint) = route.upstream.pick().ok_or(Reject::ServiceUnavailable)?;
    ctx.endpoint = Some(endpoint.addr);
    Ok((idx, endpoint))
}

/// Phase 6.
#[expect(
    clippy::too_many_arguments,
    reason = "the phase's inputs, each borrowed from a different owner (the proxy, the generation, the request)"
)]
async fn upstream_request(
    proxy: &Proxy,
    generation: &Generation,
    ctx: &mut RequestCtx,
    route: &Route,
    parts: &mut http::request::Parts,
    body: ProxyBody,
    upgrade: bool,
    (endpoint_idx, endpoint): (usize, &Endpoint),
) -> Result<UpstreamResponse, Reject> {
    let upgrade = upgrade.then(|| parts.headers.get(UPGRADE).cloned()).flatten();
    let forwarding = rewrite_request_headers(ctx, generation, parts, upgrade, endpoint)?;

    let upstream = &route.upstream;
    let error_labels = |kind| UpstreamErrorLabels {
        upstream: upstream.name.to_string(),
        kind,
    };
    let timeout = generation.timeouts().upstream_response;
    let pool = generation.upstream_pool();
    // The pool writes the origin form and HTTP/1.1 itself, whatever the URI and version say.
    // From now. When no phase before could wait (on a key fetch, on the client's body), they took microseconds,
    // and the request's start stands in for now without a clock read.
    let sent = if route.auth == AuthMode::None && route.policy.is_none() {
        ctx.started
    } else {
        Instant::now()
    };
    let deadline = tokio::time::Instant::from_std(sent) + timeout;
    let appended = forwarding.headers(ctx, generation);
    match pool.send(endpoint.addr, parts, &appended, body, deadline).await {
        Ok(resp) => {
            upstream.report_success(endpoint_idx);
            Ok(resp)
        }
        Err(e) if is_length_limit(&e) => {
            ctx.verdict = Verdict::Limit;
            Err(Reject::PayloadTooLarge)
        }
        Err(e) if !e.is_timeout() => {
            let kind = if e.is_connect() { "connect" } else { "protocol" };
            proxy
                .metrics
                .upstream_errors
                .get_or_create(&error_labels(kind))
                .inc();
            let ejected = upstream.report_failure(endpoint_idx);
            tracing::warn!(
                request_id = ctx.id(), upstream = %upstream.name, endpoint = %endpoint.addr, kind, ejected,
                error = %error_chain(&e), "upstream exchange failed; answering 502"
            );
            Err(Reject::BadGateway)
        }
        Err(_) => {
            proxy
                .metrics
                .upstream_errors
                .get_or_create(&error_labels("timeout"))
                .inc();
            let ejected = upstream.report_failure(endpoint_idx);
            tracing::warn!(
                request_id = ctx.id(), upstream = %upstream.name, endpoint = %endpoint.addr, ejected,
                timeout = %humantime::format_duration(timeout), "upstream response timed out; answering 504"
            );
            Err(Reject::GatewayTimeout)
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Hop-by-hop headers out, and the client's own forwarding headers (the proxy writes its own, see
/// [`Forwarding`]). `upgrade` keeps a WebSocket handshake intact. A request without `Host` (HTTP/2 carries the
/// URI authority instead) gets the authority, or else the endpoint's.
fn rewrite_request_headers(
    ctx: &RequestCtx,
    generation: &Generation,
    parts: &mut http::request::Parts,
    upgrade: Option<HeaderValue>,
    endpoint: &Endpoint,
) -> Result<Forwarding, Reject> {
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers, ctx.names.hop_by_hop);
    if let Some(proto) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, proto);
    }
    if !ctx.names.host {
        let authority = parts.uri.authority().unwrap_or(&endpoint.authority);
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| Reject::BadRequest)?;
        headers.insert(HOST, value);
    }
    // Only a trusted proxy's list is extended; anyone else's is their own claim, and is dropped.
    let trusted = generation
        .config
        .forwarding
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ctx.source));
    let prior = trusted
        .then(|| headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|prior| !prior.trim().is_empty());
    let extended_for = match prior {
        Some(prior) => {
            let source = ctx.source_header.to_str().unwrap_or_default();
            Some(HeaderValue::try_from(format!("{prior}, {source}")).map_err(|_| Reject::BadRequest)?)
        }
        None => None,
    };
    // The removals (hashed) only for a client that sent one.
    if ctx.names.forwarding {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&generation.request_id_header);
    }
    Ok(Forwarding { extended_for })
}

/// What the proxy tells the upstream about the request, written after the request's own headers (see
/// [`h1::Appended`]): `X-Forwarded-For` (the client, after a trusted proxy's list), `X-Forwarded-Proto`, and the
/// request id.
struct Forwarding {
    /// `X-Forwarded-For` when a trusted proxy's list was extended; `None`: the client address alone.
    extended_for: Option<HeaderValue>,
}

impl Forwarding {
    fn headers<'a>(
        &'a self,
        ctx: &'a RequestCtx,
        generation: &'a Generation,
    ) -> [(&'a HeaderName, &'a dyn HeaderText); 3] {
        let proto = if ctx.tls { &HTTPS } else { &HTTP };
        [
            (
                &X_FORWARDED_FOR,
                self.extended_for.as_ref().unwrap_or(&ctx.source_header),
            ),
            (&X_FORWARDED_PROTO, proto as &dyn HeaderText),
            (&generation.request_id_header, &ctx.id),
        ]
    }
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// RFC 9110 §7.6.1: `Connection` and the headers it names, plus the classic hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the message's few names finds which of the nine are there (most carry none, or only
    // `Connection`); only those are removed, instead of nine hashed removals.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present[i] = true;
        }
    }
    remove_hop_by_hop(headers, present);
}

/// [`strip_hop_by_hop`] when which of [`HOP_BY_HOP`] are `present` is known already.
fn remove_hop_by_hop(headers: &mut HeaderMap, present: [bool; HOP_BY_HOP.len()]) {
    // `Connection: keep-alive` (or `close`) alone, by far the most common, names nothing else to remove.
    let names_others = present[HOP_CONNECTION]
        && headers.get_all(CONNECTION).iter().any(|v| {
            !(v.as_bytes().eq_ignore_ascii_case(b"keep-alive") || v.as_bytes().eq_ignore_ascii_case(b"close"))
        });
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| h1::list_tokens(v.as_bytes()))
            // `keep-alive`, `close`, `upgrade`...: no header to remove, or removed below anyway; an empty
            // list allocates nothing.
            .filter(|t| !t.eq_ignore_ascii_case(b"close") && hop_by_hop_index(t).is_none())
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

fn is_upgrade(headers: &HeaderMap, names: &NamesSeen) -> bool {
    names.hop_by_hop[HOP_UPGRADE]
        && names.hop_by_hop[HOP_CONNECTION]
        && headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| h1::list_tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Phase 7.
fn response(
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    mut resp: UpstreamResponse,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Outcome {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (parts, upstream_body) = resp.into_parts();
        if let (Some(client), Some((upstream, early))) = (client_upgrade, upstream_body.into_upgraded()) {
            let request_id = ctx.id().to_owned();
            let conn = conn.clone();
            tokio::spawn(async move { tunnel(client, upstream, early, &conn, &request_id).await });
            return Response::from_parts(parts, Either::Right(body::empty()));
        }
        // A 101 the client did not ask for cannot be honoured.
        return error_response(Reject::BadGateway, ctx.id()).map(Either::Right);
    }
    strip_hop_by_hop(resp.headers_mut());
    ctx.raw_headers = resp.body_mut().take_raw_headers();
    resp.map(Either::Left)
}

/// Carries an upgraded connection (WebSocket) both ways until either side ends it or the registry closes the
/// client's connections. `early` is what the upstream sent right after its 101 head.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut upstream: tokio::net::TcpStream,
    early: bytes::Bytes,
    conn: &ConnInfo,
    request_id: &str,
) {
    use tokio::io::AsyncWriteExt as _;
    let mut client = match client.await {
        Ok(client) => TokioIo::new(client),
        Err(e) => {
            tracing::debug!(%request_id, error = %e, "upgrade did not complete");
            return;
        }
    };
    let carried = async {
        client.write_all(&early).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    tokio::select! {
        r = carried => {
            if let Err(e) = r {
                tracing::debug!(%request_id, error = %e, "upgraded connection ended");
            }
        }
        () = conn.registration.closer.closed() => {
            tracing::debug!(%request_id, "upgraded connection closed by the registry");
        }
    }
}

fn error_response(reject: Reject, request_id: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": reject.code(), "request_id": request_id }).to_string();
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = reject.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(reject, Reject::Unauthorized) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Arranges phase 8 for when the body is done.
fn finish(
    conn: Arc<ConnInfo>,
    generation: Arc<Generation>,
    ctx: Box<RequestCtx>,
    resp: Outcome,
) -> Response<ProxyBody> {
    let status = resp.status();
    resp.map(|b| {
        Finishing::new(b, move |bytes_out, complete| {
            log(&conn.proxy, &generation, &ctx, status, bytes_out, complete);
        })
        .boxed()
    })
}

/// Phase 8: the access line and the request metrics.
fn log(
    proxy: &Proxy,
    generation: &Generation,
    ctx: &RequestCtx,
    status: StatusCode,
    bytes_out: u64,
    complete: bool,
) {
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(ctx.started);
    let matched = ctx.route.and_then(|i| generation.router.get(i));
    let route = matched.map_or("", |r| &*r.label);
    proxy
        .metrics
        .observe_request(route, status.as_u16(), elapsed.as_secs_f64());
    // 4xx bursts are scanning; the answer itself is already out, so only a ban can follow.
    if status.is_client_error() && matches!(ctx.verdict, Verdict::Allow | Verdict::Error) {
        let _ = proxy.risk.observe(
            &risk_context(ctx, matched.map(|r| &*r.label), None),
            Signal::Status(status.as_u16()),
            now,
            &proxy.metrics,
        );
    }
    crate::logging::access(
        &AccessLine {
            request_id: ctx.id(),
            source: ctx.source,
            method: &ctx.method,
            path: ctx.uri.path(),
            identity: ctx.identity.as_ref().map(|i| &*i.subject),
            route,
            upstream: matched.filter(|_| ctx.upstream_chosen).map(|r| &*r.upstream.name),
            endpoint: ctx.endpoint,
            status: status.as_u16(),
            bytes_in: ctx.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)),
            bytes_out,
            latency: elapsed,
            verdict: ctx.verdict,
            complete,
        },
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str().as_bytes()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(CONTENT_TYPE.as_str().as_bytes()), None);
        assert_eq!(hop_by_hop_index(b"x-connection"), None);
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn error_bodies_say_only_the_class_and_id() {
        let resp = error_response(Reject::BadGateway, "abc");
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }
}
