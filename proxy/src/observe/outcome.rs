//! What became of a request, as metrics and the access log name it.

/// What was decided for a request (`portcullis_authorization_decisions_total{outcome}`, the
/// access log's `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing yet (the request ended before a decision).
    None,
    /// The policy allowed a signed-in request.
    Allow,
    /// The route is public.
    Public,
    /// Signed in, but the policy denies.
    Deny,
    /// Sent to sign in.
    SignIn,
    /// Answered by one of Portcullis's own endpoints.
    Portcullis,
    NotFound,
    BadRequest,
    /// No valid session, for a client that is not a browser.
    Unauthenticated,
    /// A dependency (the session store, the IdP) is down.
    Unavailable,
    BadGateway,
    GatewayTimeout,
    /// The client's request body stalled.
    RequestTimeout,
    MethodNotAllowed,
    SignInFailed,
    /// A live stream closed because its session ended.
    StreamClosedSignedOut,
    /// A live stream closed because the policy no longer lets it through.
    StreamClosedPolicy,
}

// === impl Outcome ===

impl Outcome {
    /// The label, as metrics and logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Allow => "allow",
            Outcome::Public => "public",
            Outcome::Deny => "deny",
            Outcome::SignIn => "sign_in",
            Outcome::Portcullis => "portcullis",
            Outcome::NotFound => "not_found",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Unavailable => "unavailable",
            Outcome::BadGateway => "bad_gateway",
            Outcome::GatewayTimeout => "gateway_timeout",
            Outcome::RequestTimeout => "request_timeout",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::SignInFailed => "sign_in_failed",
            Outcome::StreamClosedSignedOut => "stream_closed_signed_out",
            Outcome::StreamClosedPolicy => "stream_closed_policy",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
