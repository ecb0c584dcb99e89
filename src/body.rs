//! The response body type used through the whole stack.
//!
//! Upstream bodies stream through unchanged; the gateway's own answers are small full bodies.
//! Both become one boxed type so every layer has the same `Response<Body>`.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// Errors a body can fail with while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every layer.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An answer kept for a long time (cache, idempotency store): body and headers serialised into
/// one allocation of its own. Hyper's parsed body and header values share the connection's read
/// buffer, which must not stay pinned; and one buffer costs far less than a `HeaderMap` per
/// entry. Headers are rebuilt per use from slices of the buffer: well-known names resolve to
/// constants and values share the buffer, so a use allocates only the response's map.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    status: http::StatusCode,
    /// The body, then for each header: name, `\0`, value, `\0`.
    buf: Bytes,
    body_len: usize,
}

impl StoredAnswer {
    /// Copies `status`, `headers` (without `Content-Length` and `Transfer-Encoding`) and `body`.
    pub fn new(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Self {
        // Framing headers are never stored: the replayed body decides its own framing.
        fn kept(name: &http::HeaderName) -> bool {
            name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING
        }
        let headers = || headers.iter().filter(|(k, _)| kept(k));
        let header_bytes: usize = headers().map(|(k, v)| k.as_str().len() + v.len() + 2).sum();
        let mut buf = bytes::BytesMut::with_capacity(body.len() + header_bytes);
        buf.extend_from_slice(body);
        for (name, value) in headers() {
            // Header names and values never contain NUL (http refuses them).
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b"\0");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\0");
        }
        StoredAnswer {
            status,
            buf: buf.freeze(),
            body_len: body.len(),
        }
    }

    /// The answer as a response.
    pub fn response(&self) -> http::Response<Body> {
        let mut resp = http::Response::new(full(self.buf.slice(..self.body_len)));
        *resp.status_mut() = self.status;
        let out = resp.headers_mut();
        let mut at = self.body_len;
        let mut fields = self.buf[self.body_len..].split(|b| *b == 0);
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let value_at = at + name.len() + 1;
            at = value_at + value.len() + 1;
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_maybe_shared(
                    self.buf.slice(value_at..value_at + value.len()),
                ),
            ) else {
                continue;
            };
            out.append(name, value);
        }
        resp
    }

    /// The status.
    pub fn status(&self) -> http::StatusCode {
        self.status
    }

    /// Bytes held (body and headers).
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The answer as one byte string (status, body length, then the buffer), to store it
    /// outside the process.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.buf.len());
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&(self.body_len as u64).to_be_bytes());
        out.extend_from_slice(&self.buf);
        out
    }

    /// Reads what [`StoredAnswer::to_bytes`] wrote; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<StoredAnswer> {
        let status =
            http::StatusCode::from_u16(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?))
                .ok()?;
        let body_len =
            usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?;
        let buf = Bytes::copy_from_slice(bytes.get(10..)?);
        (body_len <= buf.len()).then_some(StoredAnswer {
            status,
            buf,
            body_len,
        })
    }
}

/// Why [`read_limited`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is longer than the limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The stream failed.
    #[error("the body could not be read: {0}")]
    Stream(String),
    /// The request's deadline passed while the body was still arriving.
    #[error("the request's deadline (limits.request_timeout_ms) passed while the body was still arriving")]
    Deadline,
}

/// Reads a whole body of at most `limit` bytes. (Written out rather than with
/// `http_body_util::Limited`, whose boxed error trips a higher-ranked `From` bound in `Send`
/// futures.)
pub async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Stream(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// [`read_limited`], given up once `deadline` passes (on the connection's clock when polled from
/// its task, on a tokio timer otherwise). For a layer that reads an answer whole where its caller
/// may be gone (a keyed call runs on a task of its own): the upstream's body is bounded per gap
/// only (`upstream_client.body_idle_timeout_ms`), so one trickling a byte per gap would hold that
/// task, and the idempotency slot it keeps, for as long as it liked.
pub async fn read_limited_by(
    clock: Option<&crate::conn_clock::ConnClock>,
    deadline: std::time::Instant,
    body: Body,
    limit: usize,
) -> Result<Bytes, ReadError> {
    crate::conn_clock::within(clock, deadline, read_limited(body, limit))
        .await
        .unwrap_or(Err(ReadError::Deadline))
}

/// The upstream stopped sending mid-body for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream stalled mid-body: no data for {} ms", .0.as_millis())]
pub struct Stalled(pub std::time::Duration);

/// The upstream sent more than the configured maximum.
#[derive(Debug, thiserror::Error)]
#[error("the upstream answer is larger than {0} bytes (limits.max_response_body_bytes)")]
pub struct TooLarge(pub u64);

pin_project_lite::pin_project! {
    /// A streamed upstream body that fails with [`Stalled`] when no frame arrives within `idle`,
    /// so an upstream that stops mid-body cannot hold a caller's connection forever, and with
    /// [`TooLarge`] once more than its byte limit arrived.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: std::time::Duration,
        // Data arrived since the timer was last armed: re-arm from now before waiting.
        progressed: bool,
        remaining: u64,
        limit: u64,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`; the clock starts now. No byte limit.
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout::limited(inner, idle, u64::MAX)
    }

    /// Wraps `inner` with an idle timeout and a byte limit.
    pub fn limited(inner: B, idle: std::time::Duration, limit: u64) -> Self {
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
            progressed: false,
            remaining: limit,
            limit,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::{future::Future, task::Poll};
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(f)) = &frame {
                    if let Some(data) = f.data_ref() {
                        let len = data.len() as u64;
                        if len > *this.remaining {
                            *this.remaining = 0;
                            return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                        }
                        *this.remaining -= len;
                    }
                }
                // The timer is only touched when the body has to be waited for: a body that
                // arrives in one go (most of Ratepay's answers) never arms it.
                *this.progressed = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if std::mem::take(this.progressed) {
                    let next = tokio::time::Instant::now() + *this.idle;
                    this.sleep.as_mut().reset(next);
                }
                match this.sleep.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(*this.idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stored_answer_round_trips_through_bytes_and_garbage_is_refused() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("content-length", "7".parse().unwrap());
        let a = StoredAnswer::new(http::StatusCode::CREATED, &h, b"{\"a\":1}");
        let b = StoredAnswer::from_bytes(&a.to_bytes()).unwrap();
        let r = b.response();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.headers().get("content-length").is_none());
        assert_eq!(b.bytes(), a.bytes());
        let mut long = a.to_bytes();
        long[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        for bad in [
            &[][..],
            &[0, 201],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &long[..],
        ] {
            assert!(StoredAnswer::from_bytes(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_timeout() {
        let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            http_body::Frame::data(Bytes::from("{")),
        )]);
        let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        let mut body = Box::pin(IdleTimeout::new(
            http_body_util::StreamBody::new(stream),
            Duration::from_secs(10),
        ));
        let started = tokio::time::Instant::now();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from("{"));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "fails exactly at the idle timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_limit_fails_once_the_limit_is_passed() {
        let frames =
            futures_util::stream::iter(["0123", "4567", "89"].map(|s| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(s)))
            }));
        let body = IdleTimeout::limited(
            http_body_util::StreamBody::new(frames),
            Duration::from_secs(1),
            9,
        );
        let err = read_limited(boxed(body), 100).await.unwrap_err();
        assert!(err.to_string().contains("larger than 9 bytes"), "{err}");
        let frames =
            futures_util::stream::iter(["0123", "4567", "8"].map(|s| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(s)))
            }));
        let body = IdleTimeout::limited(
            http_body_util::StreamBody::new(frames),
            Duration::from_secs(1),
            9,
        );
        assert_eq!(
            read_limited(boxed(body), 100).await.unwrap().len(),
            9,
            "exactly the limit"
        );
    }

    #[test]
    fn a_stored_answer_never_keeps_upstream_framing() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        headers.insert(http::header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        let body = [b'x'; 95];
        let resp = StoredAnswer::new(http::StatusCode::CREATED, &headers, &body).response();
        assert!(resp.headers().get(http::header::CONTENT_LENGTH).is_none());
        assert!(resp
            .headers()
            .get(http::header::TRANSFER_ENCODING)
            .is_none());
        assert!(resp.headers().get(http::header::CONTENT_TYPE).is_some());
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(95));
    }

    #[test]
    fn a_stored_answer_gives_back_status_headers_and_body() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.insert("x-empty", "".parse().unwrap());
        let stored = StoredAnswer::new(http::StatusCode::CREATED, &headers, b"{\"ok\":1}");
        let resp = stored.response();
        assert_eq!(resp.status(), http::StatusCode::CREATED);
        assert_eq!(resp.headers(), &headers);
        assert_eq!(
            http_body::Body::size_hint(resp.body()).exact(),
            Some(8),
            "body length"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_passes_through() {
        let body = IdleTimeout::new(
            http_body_util::Full::new(Bytes::from("ok")),
            Duration::from_secs(1),
        );
        assert_eq!(
            read_limited(boxed(body), 10).await.unwrap(),
            Bytes::from("ok")
        );
    }
}
