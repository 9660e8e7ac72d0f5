//! Responses Portcullis answers itself, and the one place that turns a refusal into one.
//!
//! Every refusal is a [`Refusal`]; [`Refusal::reply`] decides its status, its HTML or JSON
//! body and its headers. Every reply carries headers that keep user data out of caches and
//! frames ([`Reply::send`]).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use portcullis_auth::AuthError;

use crate::observe::outcome::Outcome;

pub mod pages;
mod reasons;

pub use reasons::{Dependency, Malformed, SignInFailure};

/// Why a request is not proxied.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// No route for this host and path.
    NotFound,
    /// Malformed request.
    BadRequest(Malformed),
    /// No valid session on a protected route: browsers are sent to sign in, with the
    /// `Set-Cookie` of the browser-binding cookie the sign-in's handoff will require.
    SignIn {
        location: String,
        binding_cookie: String,
    },
    /// No valid session, and the client is not a browser (JSON or bearer).
    Unauthorized,
    /// Signed in, but the policy denies.
    Forbidden { details: Vec<String> },
    /// A state-changing request (a sign-out) sent from another site.
    CrossSite,
    /// A dependency is down (the session store, the IdP); never an allow.
    Unavailable(Dependency),
    /// Upstream refused or failed.
    BadGateway,
    /// Upstream did not answer in time.
    GatewayTimeout,
    /// The client's request body stalled past `request_body_idle_timeout`.
    RequestTimeout,
    /// Method not allowed on one of Portcullis's own endpoints.
    MethodNotAllowed,
    /// The sign-in flow failed (the IdP refused, or its answer did not validate).
    SignInFailed(SignInFailure),
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

// === impl Refusal ===

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::BadRequest(_) => 400,
            Refusal::SignIn { .. } => 302,
            Refusal::Unauthorized => 401,
            Refusal::Forbidden { .. } | Refusal::CrossSite => 403,
            Refusal::Unavailable(_) => 503,
            Refusal::BadGateway => 502,
            Refusal::GatewayTimeout => 504,
            Refusal::RequestTimeout => 408,
            Refusal::MethodNotAllowed => 405,
            Refusal::SignInFailed(_) => 401,
        }
    }

    /// What was decided, for metrics and logs.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::NotFound => Outcome::NotFound,
            Refusal::BadRequest(_) => Outcome::BadRequest,
            Refusal::SignIn { .. } => Outcome::SignIn,
            Refusal::Unauthorized => Outcome::Unauthenticated,
            Refusal::Forbidden { .. } | Refusal::CrossSite => Outcome::Deny,
            Refusal::Unavailable(_) => Outcome::Unavailable,
            Refusal::BadGateway => Outcome::BadGateway,
            Refusal::GatewayTimeout => Outcome::GatewayTimeout,
            Refusal::RequestTimeout => Outcome::RequestTimeout,
            Refusal::MethodNotAllowed => Outcome::MethodNotAllowed,
            Refusal::SignInFailed(_) => Outcome::SignInFailed,
        }
    }

    /// The refusal for a request whose proxying failed with `e`; `None` when the client went
    /// away (nothing to answer).
    pub fn for_proxy_error(e: &Error) -> Option<Refusal> {
        // A wait on the client (its body) that timed out is the client's, not the upstream's.
        if *e.etype() == ErrorType::ReadTimedout && e.esource() == &pingora::ErrorSource::Downstream
        {
            return Some(Refusal::RequestTimeout);
        }
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(Refusal::GatewayTimeout)
            }
            ErrorType::HTTPStatus(504) => Some(Refusal::GatewayTimeout),
            ErrorType::HTTPStatus(code) if *code >= 500 => Some(Refusal::BadGateway),
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => {
                Some(Refusal::BadRequest(Malformed::Unreadable))
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => Some(Refusal::BadGateway),
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Refusal::BadRequest(Malformed::Unreadable)),
                },
                _ => Some(Refusal::BadGateway),
            },
        }
    }

    pub fn reply(&self, request_id: &str, json: bool, show_details: bool) -> Reply {
        let status = self.status();
        if let Refusal::SignIn {
            location,
            binding_cookie,
        } = self
        {
            let mut reply = Reply::redirect(location);
            reply.header(header::SET_COOKIE, binding_cookie);
            return reply;
        }
        let (title, text) = self.wording();
        let details: &[String] = match self {
            Refusal::Forbidden { details } if show_details => details,
            _ => &[],
        };
        let mut reply = if json {
            let mut value = serde_json::json!({
                "status": status,
                "error": title,
                "message": text.as_ref(),
                "request_id": request_id,
            });
            if !details.is_empty() {
                value["details"] = serde_json::json!(details);
            }
            Reply::json(status, &value)
        } else {
            Reply::html(
                status,
                pages::message(status, title, &text, request_id, details, self.links()),
            )
        };
        if matches!(self, Refusal::Unauthorized) {
            reply.header(header::WWW_AUTHENTICATE, "Bearer realm=\"portcullis\"");
        }
        reply
    }
}

impl From<&AuthError> for Refusal {
    /// The refusal for a failed step of the sign-in flow: a bad sign-in link or return
    /// address is the client's, an unreachable IdP is a 503, anything else a failed sign-in.
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::MalformedSignedUrl(_)
            | AuthError::InvalidSignature
            | AuthError::Expired
            | AuthError::NotYetValid => Refusal::BadRequest(Malformed::SignInLink),
            AuthError::InvalidRedirect(_) => Refusal::BadRequest(Malformed::ReturnAddressNotServed),
            AuthError::Serialization(_) => Refusal::Unavailable(Dependency::LoginState),
            e if e.is_transient() => Refusal::Unavailable(Dependency::IdentityProvider),
            _ => Refusal::SignInFailed(SignInFailure::NotCompleted),
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::from(&e)
    }
}

// === impl Reply ===

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let mut r = Self {
            status,
            headers: Vec::with_capacity(8),
            body: body.into(),
        };
        r.headers
            .push((header::CONTENT_TYPE, HeaderValue::from_static(content_type)));
        r
    }

    pub fn html(status: u16, body: String) -> Self {
        Self::new(status, "text/html; charset=utf-8", body)
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    pub fn text(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn redirect(location: &str) -> Self {
        let mut r = Self::new(302, "text/html; charset=utf-8", Bytes::new());
        r.header(header::LOCATION, location);
        r
    }

    /// Adds a header; values that are not valid header text are dropped (they come from our
    /// own code, never from a client, so this does not happen in practice).
    pub fn header(&mut self, name: HeaderName, value: impl AsRef<str>) -> &mut Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }

    /// Writes the reply, with the headers every Portcullis page carries.
    pub async fn send(self, session: &mut Session, tls: bool) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(self.headers.len() + 8))?;
        for (name, value) in self.headers {
            resp.append_header(name, value)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, self.body.len().to_string())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(header::X_FRAME_OPTIONS, "DENY")?;
        resp.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
        resp.insert_header(header::REFERRER_POLICY, "no-referrer")?;
        resp.insert_header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        )?;
        if tls {
            resp.insert_header(
                header::STRICT_TRANSPORT_SECURITY,
                "max-age=31536000; includeSubDomains",
            )?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only || self.body.is_empty())
            .await?;
        if !head_only && !self.body.is_empty() {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}
