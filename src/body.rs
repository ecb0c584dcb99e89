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

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
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
