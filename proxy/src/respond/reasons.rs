//! Why a request is refused, as types, and every word a refusal says to a person.
//!
//! Call sites name a reason ([`Malformed`], [`Dependency`], [`SignInFailure`]); the title and
//! text of its page (or JSON answer) are chosen here, and only here.

use std::borrow::Cow;

use crate::request::path::PathError;
use crate::respond::Refusal;

/// The session store is down: said whenever a request needs it.
macro_rules! session_store_down {
    () => {
        "The session store cannot be reached"
    };
}

/// Why a request is malformed or cannot be acted on as sent (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Both framings at once: servers could read the body differently.
    ContentLengthAndTransferEncoding,
    SeveralContentLengths,
    /// Anything but one `chunked`.
    UnsupportedTransferEncoding,
    SeveralHosts,
    MissingHost,
    /// Not a host name or address (with an optional port).
    InvalidHost,
    /// The `Host` header and the request target name different hosts.
    HostMismatch,
    /// The path cannot be normalized safely.
    Path(PathError),
    /// The normalized path does not make a request target.
    InvalidTarget,
    /// A protocol upgrade (websocket) on a route that does not allow it.
    UpgradeNotAllowed,
    /// The request could not be read or passed on as HTTP.
    Unreadable,
    /// A query parameter given more than once.
    RepeatedParameter(&'static str),
    /// A required query parameter is missing.
    MissingParameter(&'static str),
    /// A programmatic login's return address is not on this machine.
    NotLoopback(&'static str),
    /// The sign-in URL does not parse.
    SignInUrl,
    /// A sign-in link with a bad or expired signature.
    SignInLink,
    /// A return address on a host this proxy does not serve.
    ReturnAddressNotServed,
    /// The login state cookie is missing or does not open.
    LoginStateLost,
    /// The IdP's answer has no `code`.
    NoCode,
    /// The IdP's answer has no `state`.
    NoState,
    /// The return address kept in the login state does not parse.
    ReturnAddressInvalid,
    /// A handoff token that is invalid, expired, replayed or for another host.
    HandoffInvalid,
    /// A sign-in link to a route host without the digest of the browser's binding cookie.
    BindingMissing,
}

/// What is down when a request cannot be decided (503; never an allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// The session store, to read or write a session.
    SessionStore,
    /// The session store, to delete the session at sign-out.
    SessionStoreAtSignOut,
    /// The identity provider.
    IdentityProvider,
    /// The login state could not be sealed into its cookie.
    LoginState,
}

/// Why a sign-in failed (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInFailure {
    /// The IdP answered with an OAuth error.
    IdpRefused { error: String, description: String },
    /// The IdP's answer did not validate.
    NotCompleted,
}

// === impl Malformed ===

impl Malformed {
    /// What the page says.
    pub fn text(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Malformed::ContentLengthAndTransferEncoding => {
                "Content-Length and Transfer-Encoding together are not allowed"
            }
            Malformed::SeveralContentLengths => "several Content-Length headers",
            Malformed::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            Malformed::SeveralHosts => "several Host headers",
            Malformed::MissingHost => "missing Host header",
            Malformed::InvalidHost => "invalid Host header",
            Malformed::HostMismatch => "Host does not match the request target",
            Malformed::Path(e) => return Cow::Owned(e.to_string()),
            Malformed::InvalidTarget => "the request target is invalid",
            Malformed::UpgradeNotAllowed => {
                "protocol upgrades (websockets) are not allowed on this route"
            }
            Malformed::Unreadable => "The request is malformed.",
            Malformed::RepeatedParameter(name) => {
                return Cow::Owned(format!("{name} is given more than once"))
            }
            Malformed::MissingParameter(name) => return Cow::Owned(format!("{name} is required")),
            Malformed::NotLoopback(name) => {
                return Cow::Owned(format!(
                    "{name} must be an http://localhost or loopback URL"
                ))
            }
            Malformed::SignInUrl => "invalid sign-in URL",
            Malformed::SignInLink => {
                "This sign-in link is invalid or has expired. Go back to the application and try again."
            }
            Malformed::ReturnAddressNotServed => {
                "The return address is not an application served here."
            }
            Malformed::LoginStateLost => {
                "This sign-in has expired or was started in another browser. Go back to the application and sign in again."
            }
            Malformed::NoCode => "the identity provider sent no code",
            Malformed::NoState => "the identity provider sent no state",
            Malformed::ReturnAddressInvalid => "the return address is invalid",
            Malformed::HandoffInvalid => {
                "This sign-in link is invalid, expired or already used. Go back to the application and sign in again."
            }
            Malformed::BindingMissing => {
                "This sign-in link was not made for a browser. Go back to the application and sign in again."
            }
        })
    }
}

// === impl Dependency ===

impl Dependency {
    /// What the page says.
    pub fn text(self) -> &'static str {
        match self {
            Dependency::SessionStore => {
                concat!(session_store_down!(), " right now. Try again in a moment.")
            }
            Dependency::SessionStoreAtSignOut => concat!(
                session_store_down!(),
                ", so the sign-out could not be recorded. Try again in a moment."
            ),
            Dependency::IdentityProvider => {
                "The identity provider cannot be reached right now, so sign-in is not possible. Try again in a moment."
            }
            Dependency::LoginState => "Sign-in cannot start right now.",
        }
    }
}

// === impl SignInFailure ===

impl SignInFailure {
    /// What the page says.
    pub fn text(&self) -> Cow<'static, str> {
        match self {
            SignInFailure::IdpRefused { error, description } => Cow::Owned(format!(
                "The identity provider refused the sign-in ({error}{}{description}).",
                if description.is_empty() { "" } else { ": " }
            )),
            SignInFailure::NotCompleted => {
                Cow::Borrowed("The sign-in could not be completed. Please try again.")
            }
        }
    }
}

// === impl Refusal ===

impl Refusal {
    /// The page's title and text.
    pub(super) fn wording(&self) -> (&'static str, Cow<'static, str>) {
        let fixed = |title, text| (title, Cow::Borrowed(text));
        match self {
            Refusal::NotFound => {
                fixed("Not found", "No application is configured at this address.")
            }
            Refusal::BadRequest(why) => ("Bad request", why.text()),
            Refusal::Unauthorized => {
                fixed("Unauthorized", "Sign-in is required for this application.")
            }
            Refusal::Forbidden { .. } => fixed(
                "Access denied",
                "You are signed in, but this application's policy does not allow your request.",
            ),
            Refusal::CrossSite => fixed(
                "Forbidden",
                "This request came from another site, so nothing was changed. To sign out, use the button on the sign-out page.",
            ),
            Refusal::Unavailable(what) => ("Service unavailable", Cow::Borrowed(what.text())),
            Refusal::BadGateway => fixed(
                "Bad gateway",
                "The application behind this address could not be reached.",
            ),
            Refusal::GatewayTimeout => fixed(
                "Gateway timeout",
                "The application behind this address did not answer in time.",
            ),
            Refusal::RequestTimeout => fixed(
                "Request timeout",
                "The request's body stopped arriving before it was complete.",
            ),
            Refusal::MethodNotAllowed => fixed(
                "Method not allowed",
                "This endpoint does not accept that method.",
            ),
            Refusal::SignInFailed(why) => ("Sign-in failed", why.text()),
            Refusal::SignIn { .. } => fixed("", ""),
        }
    }

    /// Where a person can go from the page of this refusal (label, same-host path).
    pub(super) fn links(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Forbidden { .. } => &[
                ("Your session", "/.portcullis/"),
                ("Sign out and use another account", "/.portcullis/sign_out"),
            ],
            Refusal::CrossSite => &[("Sign-out page", "/.portcullis/sign_out")],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_store_outage_reads_as_before() {
        assert_eq!(
            Dependency::SessionStore.text(),
            "The session store cannot be reached right now. Try again in a moment."
        );
        assert_eq!(
            Dependency::SessionStoreAtSignOut.text(),
            "The session store cannot be reached, so the sign-out could not be recorded. Try again in a moment."
        );
    }

    #[test]
    fn worded_reasons_name_what_they_carry() {
        assert_eq!(
            Malformed::RepeatedParameter("code").text(),
            "code is given more than once"
        );
        let refused = SignInFailure::IdpRefused {
            error: "access_denied".into(),
            description: "no".into(),
        };
        assert_eq!(
            refused.text(),
            "The identity provider refused the sign-in (access_denied: no)."
        );
        let bare = SignInFailure::IdpRefused {
            error: "access_denied".into(),
            description: String::new(),
        };
        assert_eq!(
            bare.text(),
            "The identity provider refused the sign-in (access_denied)."
        );
    }
}
