//! The admin listener and live reload: metrics, health, a good reload that keeps open connections, and bad
//! reloads that leave the old config serving.

mod proxy_support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use proxy_support::{TestProxy, Upstream, get, json, send, with_listeners};

fn config(upstream: &Upstream) -> String {
    format!(
        "[[upstream]]\nname = \"u\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        upstream.addr
    )
}

#[expect(clippy::unwrap_used, reason = "test helper: a failure here is a failed test")]
async fn reload(p: &TestProxy) -> (http::StatusCode, serde_json::Value) {
    let (s, _, body) = send(
        Request::post(p.admin_url("/admin/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    (s, json(&body))
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&config(&a)).await;
    assert_eq!(get(&p.admin_url("/healthz")).await.0, 200);
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 200);
    for _ in 0..3 {
        get(&p.url("/x")).await;
    }
    let text = String::from_utf8(get(&p.admin_url("/metrics")).await.2.to_vec()).unwrap();
    assert!(
        text.contains("rasp_proxy_requests_total{route=\"all\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("rasp_proxy_request_duration_seconds_count{route=\"all\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(text.contains("rasp_proxy_open_connections"), "{text}");
}

#[tokio::test]
async fn reload_switches_routes_without_dropping_open_connections() {
    let (first, second) = (Upstream::start("a").await, Upstream::start("b").await);
    let p = TestProxy::start(&config(&first)).await;
    // A keep-alive connection opened before the reload.
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let ask = async |sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let req = Request::get("/who")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        json(&resp.into_body().collect().await.unwrap().to_bytes())["upstream"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(ask(&mut sender).await, "a");

    std::fs::write(p.config_path(), with_listeners(&config(&second))).unwrap();
    let (s, j) = reload(&p).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["generation"], 2);
    assert_eq!(
        ask(&mut sender).await,
        "b",
        "the same connection now reaches the new upstream"
    );
    assert_eq!(json(&get(&p.url("/who")).await.2)["upstream"], "b");
}

#[tokio::test]
async fn bad_reloads_are_refused_and_the_old_config_keeps_serving() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&config(&a)).await;
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    for (bad, key) in [
        (good.replace("path_prefix", "path_prefx"), "path_prefx"),
        (
            good.replace("upstream = \"u\"", "upstream = \"missing\""),
            "route[0].upstream",
        ),
        (format!("{good}\n[timeouts]\nidle = \"soon\"\n"), "idle"),
        (
            good.replace(
                "[[listener]]\nlisten = \"127.0.0.1:0\"",
                "[[listener]]\nlisten = \"127.0.0.1:1\"",
            ),
            "restart",
        ),
    ] {
        std::fs::write(p.config_path(), bad).unwrap();
        let (s, j) = reload(&p).await;
        assert_eq!(s, 400);
        assert!(j["error"].as_str().unwrap().contains(key), "{key}: {j}");
        let (s, _, body) = get(&p.url("/still")).await;
        assert_eq!(s, 200);
        assert_eq!(json(&body)["upstream"], "a");
    }
    let text = String::from_utf8(get(&p.admin_url("/metrics")).await.2.to_vec()).unwrap();
    assert!(
        text.contains("rasp_proxy_config_reloads_failed_total 4"),
        "{text}"
    );
}
