//! No panic reaches a client as a reset connection. A panic in a handler becomes a
//! 500 error in the shape of the route's protocol (Anthropic's on `/v1/messages`,
//! OpenAI's elsewhere); a panic while a response body is produced (a stream being
//! relayed) ends that body with an error instead of tearing the connection down.
//!
//! The request's ledger row is its tracker's: a tracker dropped while its thread
//! unwinds records the request as an internal error (see [`super::tracker`]), so a
//! panicking request still yields exactly one `requests` row.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue};
use http_body::Frame;

use super::error::ApiError;

/// The middleware: wraps the handler and its response body.
pub async fn catch_panics(req: Request, next: Next) -> Response {
    let anthropic = req.uri().path().starts_with("/v1/messages");
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(res) => res.map(|body| {
            Body::new(CatchBody {
                inner: body,
                done: false,
            })
        }),
        Err(payload) => {
            tracing::error!(panic = %message(payload.as_ref()), "a request handler panicked");
            panic_response(anthropic)
        }
    }
}

fn panic_response(anthropic: bool) -> Response {
    let e = ApiError::internal("The gateway failed while handling this request.");
    if !anthropic {
        return e.into_response();
    }
    let body = serde_json::to_vec(&super::anthropic::error_json(&e)).unwrap_or_default();
    let mut res = (e.status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// What a panic said, for the log.
fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A response body whose panics end it with an error.
struct CatchBody {
    inner: Body,
    /// Set after a panic: the inner body is not polled again.
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the response body failed")]
struct BodyPanicked;

impl http_body::Body for CatchBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut self.inner).poll_frame(cx)
        }));
        match polled {
            Ok(poll) => poll.map(|frame| frame.map(|f| f.map_err(Into::into))),
            Err(payload) => {
                tracing::error!(panic = %message(payload.as_ref()), "a response body panicked");
                self.done = true;
                Poll::Ready(Some(Err(Box::new(BodyPanicked))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.done {
            return http_body::SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
