//! Inspector throughput: typical requests (targets: ≥ 100k requests/s per core) and large benign JSON
//! bodies (≥ 300 MB/s per core). `cargo bench -p proxy-user --bench inspect`.
//!
//! Each case also runs through `inspect_exhaustive` (`…/exhaustive`): the same verdict without the
//! prefilter, so the gap shows what the prefilter saves and a prefilter that stops saving shows up here.

use std::{fmt::Write as _, hint::black_box};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proxy_user::inspect::{Policy, RequestView, inspect, inspect_exhaustive};

const UA: &[u8] = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn typical_get(c: &mut Criterion) {
    let headers: &[(&str, &[u8])] = &[
        ("Host", b"shop.example.com"),
        ("User-Agent", UA),
        (
            "Accept",
            b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("Accept-Language", b"en-US,en;q=0.9"),
        ("Accept-Encoding", b"gzip, deflate, br"),
        (
            "Referer",
            b"https://shop.example.com/catalog?category=shoes&page=2",
        ),
        (
            "Cookie",
            b"sessionid=8f2a9c1e77b04d2a; cart=3; lang=en-US; _ga=GA1.2.1234567890.1700000000",
        ),
        ("Sec-Fetch-Mode", b"navigate"),
        ("Upgrade-Insecure-Requests", b"1"),
    ];
    let req = RequestView {
        method: "GET",
        target: "/api/v2/products/search?q=running+shoes&size=42&color=blue&sort=price_asc&page=3&utm_source=newsletter",
        headers,
        body: b"",
        body_truncated: false,
    };
    let policy = Policy::default();
    let mut g = c.benchmark_group("typical");
    g.throughput(Throughput::Elements(1));
    g.bench_function("browser_get", |b| {
        b.iter(|| black_box(inspect(black_box(&req), &policy)));
    });
    g.bench_function("browser_get/exhaustive", |b| {
        b.iter(|| black_box(inspect_exhaustive(black_box(&req), &policy)));
    });

    let json_headers: &[(&str, &[u8])] = &[
        ("Host", b"api.example.com"),
        ("User-Agent", b"okhttp/4.12.0"),
        ("Content-Type", b"application/json"),
        (
            "Authorization",
            b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1MSJ9.sig",
        ),
        ("X-Request-Id", b"5b0e7c8e-2f7a-4b8e-9a57-0d3f3b0c1a2e"),
    ];
    let body = br#"{"order":{"id":"ord_81723","customer":{"name":"Anne O'Brien","email":"anne@example.com"},"items":[{"sku":"SHOE-42-BLU","qty":1,"price":89.9},{"sku":"SOCK-M","qty":3,"price":4.5}],"note":"Please leave at the door, thanks!","coupon":null}}"#;
    let post = RequestView {
        method: "POST",
        target: "/api/v2/orders",
        headers: json_headers,
        body,
        body_truncated: false,
    };
    g.bench_function("api_json_post", |b| {
        b.iter(|| black_box(inspect(black_box(&post), &policy)));
    });
    g.bench_function("api_json_post/exhaustive", |b| {
        b.iter(|| black_box(inspect_exhaustive(black_box(&post), &policy)));
    });
    g.finish();
}

/// A ~1 MiB benign JSON document shaped like an API export: ids, names, prose, URLs, numbers.
fn large_json() -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < 1 << 20 {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"id":{i},"uuid":"6f1c2b3a-{i:08x}-4d5e-8f90-a1b2c3d4e5f6","name":"Product number {i}","description":"A comfortable, durable shoe for everyday running. Available in several colours; ships in 2-3 days.","url":"https://shop.example.com/p/{i}?ref=list","price":{}.99,"tags":["running","sport","sale"],"stock":{{"warehouse":"east-{}","count":{}}},"active":true}}"#,
            i % 200,
            i % 7,
            i * 3 % 1000
        );
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn large_body(c: &mut Criterion) {
    let body = large_json();
    let headers: &[(&str, &[u8])] = &[("Content-Type", b"application/json")];
    let req = RequestView {
        method: "POST",
        target: "/api/import",
        headers,
        body: &body,
        body_truncated: false,
    };
    let policy = Policy {
        max_body_bytes: 4 << 20,
        ..Policy::default()
    };
    assert!(
        !inspect(&req, &policy).blocked,
        "the benchmark body must be benign"
    );
    let mut g = c.benchmark_group("large_body");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(20);
    g.bench_function("json_1mib", |b| {
        b.iter(|| black_box(inspect(black_box(&req), &policy)));
    });
    g.bench_function("json_1mib/exhaustive", |b| {
        b.iter(|| black_box(inspect_exhaustive(black_box(&req), &policy)));
    });
    g.finish();
}

criterion_group!(benches, typical_get, large_body);
criterion_main!(benches);
