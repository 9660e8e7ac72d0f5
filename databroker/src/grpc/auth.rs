//! Call tokens on the wire: [`Authenticated`] checks them on the server, [`Bearer`] adds them
//! on the client.
//!
//! The server side is a service wrapper rather than a tonic interceptor, because a token is
//! bound to the method it was made for and interceptors do not see the request's path.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::{GrpcMethod, Request, Status};
use tracing::warn;

use super::token::{now_unix, TokenError, TokenKey, TokenVerifier};

/// A gRPC service that answers `UNAUTHENTICATED` to calls without a valid token for the
/// method called (and `UNAVAILABLE` while too many recent tokens are remembered).
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
}

/// Adds a fresh token for the method called to every call.
#[derive(Clone)]
pub struct Bearer {
    key: TokenKey,
}

// === impl Authenticated ===

impl<S> Authenticated<S> {
    pub fn new(inner: S, verifier: Arc<TokenVerifier>) -> Self {
        Self { inner, verifier }
    }

    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing databroker token"))?;
        let method = request.uri().path();
        self.verifier
            .verify(token, method, now_unix())
            .map_err(|e| {
                match e {
                    // A replay is someone holding a token that was already used.
                    TokenError::Replayed => {
                        warn!(method, "databroker: refused a replayed call token")
                    }
                    TokenError::Busy => {
                        warn!(method, "databroker: replay cache full; refusing calls")
                    }
                    _ => {}
                }
                match e {
                    TokenError::Busy => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(format!("invalid databroker token: {e}")),
                }
            })
    }
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.check(&request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

// === impl Bearer ===

impl Bearer {
    pub fn new(key: TokenKey) -> Self {
        Self { key }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // The generated client names the method of every call in this extension.
        let method = request
            .extensions()
            .get::<GrpcMethod<'static>>()
            .map(|m| format!("/{}/{}", m.service(), m.method()))
            .ok_or_else(|| Status::internal("call without a method name"))?;
        let value = format!("Bearer {}", self.key.issue(&method, now_unix()));
        let value = MetadataValue::try_from(value)
            .map_err(|_| Status::internal("token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}
