//! Fuzzes the decoders and the whole inspection pipeline: no input may panic, and libFuzzer's `-timeout`
//! catches anything slower than linear.
//!
//! The input is split on `\n` into a request-target, one header value, a Content-Type and a body, so one
//! input exercises the query, header, cookie and every body parser at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_user::inspect::{Policy, RequestView, decode, inspect};

fuzz_target!(|data: &[u8]| {
    let _ = decode::normalize(data, 1 << 16);
    let text = String::from_utf8_lossy(data);
    let _ = decode::fold_sql(&text);
    let _ = decode::normalize_path(&text);

    let mut parts = data.splitn(4, |&b| b == b'\n');
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let header = parts.next().unwrap_or_default();
    let content_type = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let headers: [(&str, &[u8]); 5] = [
        ("User-Agent", header),
        ("Cookie", header),
        ("X-Custom", header),
        ("Content-Type", content_type),
        ("Transfer-Encoding", header),
    ];
    let target = format!("/{target}");
    for ct in [
        content_type,
        b"application/json",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=b",
        b"application/xml",
    ] {
        let hs = [headers[0], headers[1], headers[2], ("Content-Type", ct)];
        let req = RequestView {
            method: "POST",
            target: &target,
            headers: &hs,
            body,
            body_truncated: false,
        };
        let _ = inspect(&req, &Policy::default());
    }
    let req = RequestView {
        method: "GET",
        target: &target,
        headers: &headers,
        body,
        body_truncated: true,
    };
    let _ = inspect(
        &req,
        &Policy {
            paranoia: 4,
            ..Policy::default()
        },
    );
});
