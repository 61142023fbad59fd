//! Body wrappers of the request path: byte counting, the inspector's bounded prefix, and the response body
//! whose end (or abandonment) writes the access log line.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

#[must_use]
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

#[must_use]
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Counts the data bytes that pass through.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads up to `limit` body bytes for the inspector and returns them with a body that replays them and then
/// streams the rest, so the upstream sees the body unchanged and the proxy never holds more than `limit`.
pub async fn buffer_prefix(mut body: ProxyBody, limit: usize) -> Result<(Bytes, ProxyBody), BoxError> {
    let hint = body.size_hint();
    let mut prefix = BytesMut::new();
    let mut trailers = None;
    let mut ended = body.is_end_stream();
    while !ended && prefix.len() < limit {
        match body.frame().await {
            None => ended = true,
            Some(frame) => match frame?.into_data() {
                Ok(data) => prefix.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
        }
    }
    let prefix = prefix.freeze();
    // The inspector sees at most `limit` bytes even if the last frame went past it; the replay keeps them all.
    let seen = prefix.slice(..prefix.len().min(limit));
    let rest = if ended { None } else { Some(body) };
    Ok((
        seen,
        Replay {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            trailers,
            rest,
            hint,
        }
        .boxed(),
    ))
}

struct Replay {
    prefix: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Option<ProxyBody>,
    hint: SizeHint,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.trailers.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A response body that runs `on_end` once, when the body has been fully sent or is dropped unfinished, with
/// the number of bytes sent and whether it completed.
pub struct Finishing<B: Body, F: FnOnce(u64, bool) + Send + Sync + 'static> {
    inner: B,
    sent: u64,
    complete: bool,
    on_end: Option<F>,
}

impl<B: Body, F: FnOnce(u64, bool) + Send + Sync + 'static> Finishing<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Self {
            inner,
            sent: 0,
            complete: false,
            on_end: Some(on_end),
        }
    }
}

impl<B, F> Body for Finishing<B, F>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    F: FnOnce(u64, bool) + Send + Sync + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: FnOnce(u64, bool) + Send + Sync + 'static> Drop for Finishing<B, F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.sent, self.complete || self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A body delivering fixed chunks one frame at a time, like a slow client.
    struct Chunks(VecDeque<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from_static(c)))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> ProxyBody {
        Chunks(parts.iter().copied().collect()).boxed()
    }

    #[tokio::test]
    async fn prefix_is_bounded_and_body_replays_unchanged() {
        let (seen, body) = buffer_prefix(chunks(&[b"hello ", b"big ", b"world"]), 8)
            .await
            .unwrap();
        assert_eq!(&seen[..], b"hello bi");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"hello big world");
        let (seen, body) = buffer_prefix(chunks(&[b"ab"]), 8).await.unwrap();
        assert_eq!(&seen[..], b"ab");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"ab");
    }
}
