//! Route matching: a route answers when its host (if any) equals the request's host and its path prefix
//! covers the path on a segment boundary. The most specific route wins: a host route before a wildcard one,
//! then the longest prefix. Methods are checked after the match, so a known path with a wrong method gets 405
//! rather than falling through to a catch-all route with other rules.

use std::sync::Arc;

use http::Method;

use crate::{config::RouteConfig, identity::config::AuthMode};

use super::upstream::Upstream;

#[derive(Debug)]
pub struct Route {
    /// The route's place in its [`Router`] (see [`Router::get`]).
    pub index: usize,
    pub label: Box<str>,
    pub host: Option<String>,
    pub path_prefix: String,
    pub methods: Vec<Method>,
    pub auth: AuthMode,
    pub scopes: Vec<String>,
    pub upstream: Arc<Upstream>,
    /// The inspection policy with this route's overrides applied; `None` when inspection is off.
    pub policy: Option<Arc<crate::inspect::Policy>>,
    /// Weight of this route's events in the risk engine.
    pub sensitivity: f64,
}

#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Route),
    MethodNotAllowed(&'a Route),
    NotFound,
}

#[derive(Debug, Default)]
pub struct Router {
    /// Sorted most specific first, so the first match is the answer.
    routes: Vec<Route>,
}

impl Router {
    #[must_use]
    pub fn new(
        configs: &[RouteConfig],
        policy: Option<&crate::inspect::Policy>,
        upstream: impl Fn(&str) -> Option<Arc<Upstream>>,
    ) -> Option<Self> {
        let mut routes = Vec::with_capacity(configs.len());
        for c in configs {
            routes.push(Route {
                index: 0,
                label: c.label().into(),
                host: c.host.as_ref().map(|h| h.to_ascii_lowercase()),
                path_prefix: c.path_prefix.clone(),
                methods: c.methods.clone(),
                auth: c.auth,
                scopes: c.scopes.clone(),
                upstream: upstream(&c.upstream)?,
                policy: policy.map(|p| {
                    Arc::new(
                        c.inspection
                            .as_ref()
                            .map_or_else(|| p.clone(), |o| p.with_override(o)),
                    )
                }),
                sensitivity: c.sensitivity,
            });
        }
        // Stable sort keeps file order among equals, so the first-written of two identical routes wins.
        routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.path_prefix.len())));
        for (index, r) in routes.iter_mut().enumerate() {
            r.index = index;
        }
        Some(Self { routes })
    }

    /// The route at `index` ([`Route::index`]): how a request names its route without holding a reference
    /// count on anything shared by every worker.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Whether any route names a host: without one, the request's host is never needed.
    #[must_use]
    pub fn has_host_routes(&self) -> bool {
        // Host routes sort first.
        self.routes.first().is_some_and(|r| r.host.is_some())
    }

    /// `host` is the request's host without port, any case.
    #[must_use]
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch<'_> {
        let mut wrong_method: Option<&Route> = None;
        for r in &self.routes {
            if let Some(w) = wrong_method
                && (w.host != r.host || w.path_prefix != r.path_prefix)
            {
                break;
            }
            if let Some(h) = &r.host
                && !host.is_some_and(|req| req.eq_ignore_ascii_case(h))
            {
                continue;
            }
            if !prefix_matches(&r.path_prefix, path) {
                continue;
            }
            if r.methods.is_empty() || r.methods.contains(method) {
                return RouteMatch::Found(r);
            }
            wrong_method.get_or_insert(r);
        }
        wrong_method.map_or(RouteMatch::NotFound, RouteMatch::MethodNotAllowed)
    }
}

/// `/orders` covers `/orders`, `/orders/7` and `/orders?x`, but not `/ordersx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::UpstreamConfig;

    fn route(name: &str, host: Option<&str>, prefix: &str, methods: &[Method]) -> RouteConfig {
        RouteConfig {
            name: Some(name.into()),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            upstream: "u".into(),
            auth: AuthMode::None,
            methods: methods.to_vec(),
            scopes: vec![],
            inspection: None,
            sensitivity: 1.0,
        }
    }

    #[test]
    fn host_then_longest_prefix_then_method() {
        let up = Arc::new(Upstream::new(&UpstreamConfig {
            name: "u".into(),
            endpoints: vec!["127.0.0.1:1".parse().unwrap()],
            eject_after_failures: 1,
            eject_cooldown: Duration::from_secs(1),
        }));
        let r = Router::new(
            &[
                route("root", None, "/", &[]),
                route("orders", None, "/orders", &[Method::GET]),
                route("orders-items", None, "/orders/items", &[]),
                route("admin-host", Some("Admin.Example"), "/", &[]),
            ],
            None,
            |_| Some(up.clone()),
        )
        .unwrap();
        let name = |host, path, m: Method| match r.find(host, path, &m) {
            RouteMatch::Found(r) => r.label.to_string(),
            RouteMatch::MethodNotAllowed(r) => format!("405:{}", r.label),
            RouteMatch::NotFound => "404".into(),
        };
        assert_eq!(name(None, "/orders/1", Method::GET), "orders");
        assert_eq!(name(None, "/orders", Method::GET), "orders");
        assert_eq!(name(None, "/ordersx", Method::GET), "root");
        assert_eq!(name(None, "/orders/items/3", Method::DELETE), "orders-items");
        assert_eq!(name(None, "/orders/1", Method::DELETE), "405:orders");
        assert_eq!(name(Some("admin.example"), "/orders", Method::GET), "admin-host");
        assert_eq!(name(Some("other"), "/x", Method::GET), "root");
    }
}
