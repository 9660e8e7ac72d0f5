//! The authenticate endpoints, served by the proxy listener itself.
//!
//! On the authenticate host: `/.portcullis/sign_in` (checks the signed return URL and starts
//! the OIDC flow), `/oauth2/callback` (finishes it, stores the session, hands it to the route
//! host), `/.portcullis/sign_out`, `/.portcullis/api/v1/login` and the JWKS. On every route
//! host: `/.portcullis/` (the signed-in user), `/.portcullis/callback/` (adopts a handed-off
//! session by setting that host's cookie), `/.portcullis/sign_out` and the JWKS.
//!
//! Cookies never cross hosts: a session reaches a route host only through a short-lived,
//! single-use, encrypted handoff token minted by the authenticate host for that host, and
//! each session cookie is sealed for the scope of the host that sets it
//! ([`Runtime::session_scope`]). Before a route host sends a browser to sign in, it sets a
//! host-only browser-binding cookie (`<cookie_name>_csrf`, `Path=/.portcullis/`) and puts the
//! digest of its value in the signed sign-in link; the handoff carries that digest, and the
//! route host's callback redeems it only with the matching cookie, so a copied link signs
//! no other browser in.

use std::sync::Arc;

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use portcullis_auth::{
    find_cookie, validate_redirect, BindingDigest, BrowserBinding, Handoff, SessionCookie,
    SignInFlow, SignInReturn,
};
use tracing::{info, warn};
use url::Url;

use crate::authorize::load_session;
use crate::clock::now_unix;
use crate::ctx::Ctx;
use crate::observe::outcome::Outcome;
use crate::respond::pages;
use crate::respond::{Dependency, Malformed, Refusal, Reply, SignInFailure};
use crate::state::{Runtime, State, LOGIN_STATE_COOKIE_TTL};

pub const JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";
pub const SIGN_IN_PATH: &str = "/.portcullis/sign_in";
pub const OAUTH_CALLBACK_PATH: &str = "/oauth2/callback";
pub const SIGN_OUT_PATH: &str = "/.portcullis/sign_out";
pub const SIGNED_OUT_PATH: &str = "/.portcullis/signed_out";
pub const USER_PATH: &str = "/.portcullis/";
pub const HOST_CALLBACK_PATH: &str = "/.portcullis/callback/";
pub const LOGIN_API_PATH: &str = "/.portcullis/api/v1/login";

/// Query parameter carrying the URL to return to after sign-in.
pub const REDIRECT_PARAM: &str = "portcullis_redirect_uri";
/// Query parameter carrying the handoff token to a route host.
pub const HANDOFF_PARAM: &str = "portcullis_handoff";
/// Query parameter marking a programmatic (command-line) sign-in.
pub const PROGRAMMATIC_PARAM: &str = "portcullis_programmatic";
/// Query parameter carrying the session token back to a command-line client.
pub const TOKEN_PARAM: &str = "portcullis_token";
/// Signed query parameter of a sign-in link to a route host: the digest of the browser's
/// binding cookie on that host.
pub const BINDING_PARAM: &str = "portcullis_binding";
/// Signed query parameter of a programmatic sign-in link: the scope the token is sealed for
/// (that of the host whose login endpoint minted the link).
pub const SCOPE_PARAM: &str = "portcullis_scope";

/// How long a signed sign-in link stays valid.
const SIGN_IN_LINK_TTL_SECS: i64 = 300;

/// Sends a browser to sign in and come back to `original`: the signed sign-in link, bound to
/// the browser's binding cookie on this host (its current one when it has one, so that two
/// tabs signing in at once do not undo each other, else a new one, set with the redirect).
pub fn send_to_sign_in(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    original: &str,
    now: i64,
) -> Refusal {
    let binding = find_cookie(
        req.headers.get_all(header::COOKIE),
        &runtime.session_cookie.binding_cookie_name(),
    )
    .and_then(BrowserBinding::from_cookie)
    .unwrap_or_else(BrowserBinding::new);
    let digest = binding.digest();
    Refusal::SignIn {
        location: signed_sign_in_url(
            state,
            runtime,
            original,
            &[(BINDING_PARAM, digest.as_str())],
            now,
        ),
        binding_cookie: runtime
            .session_cookie
            .set_binding_cookie(&binding, LOGIN_STATE_COOKIE_TTL),
    }
}

/// The signed sign-in URL that returns to `target`, with the `extra` parameters (signed too).
fn signed_sign_in_url(
    state: &State,
    runtime: &Runtime,
    target: &str,
    extra: &[(&str, &str)],
    now: i64,
) -> String {
    let mut url = runtime.config.authenticate.url.clone();
    url.set_path(SIGN_IN_PATH);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair(REDIRECT_PARAM, target);
        for (name, value) in extra {
            q.append_pair(name, value);
        }
    }
    state
        .url_signer
        .sign(&url, now, SIGN_IN_LINK_TTL_SECS)
        .to_string()
}

/// Requests to the authenticate host.
pub async fn serve_authenticate_host(
    state: &State,
    runtime: &Runtime,
    session: &mut Session,
    ctx: &mut Ctx,
    path: &str,
) -> Result<Reply, Refusal> {
    let req = session.req_header();
    match path {
        SIGN_IN_PATH => {
            only_get(req)?;
            sign_in(state, runtime, req, ctx).await
        }
        OAUTH_CALLBACK_PATH => {
            only_get(req)?;
            oauth_callback(state, runtime, req, ctx).await
        }
        SIGN_OUT_PATH => sign_out(state, runtime, req, ctx).await,
        SIGNED_OUT_PATH => Ok(Reply::html(200, pages::signed_out())),
        LOGIN_API_PATH => login_api(state, runtime, req, ctx),
        JWKS_PATH => Ok(jwks(state)),
        "/" | USER_PATH => user_page(state, runtime, req, ctx).await,
        _ => Err(Refusal::NotFound),
    }
}

/// Portcullis's own endpoints on a route host.
pub async fn serve_route_host(
    state: &State,
    runtime: &Runtime,
    session: &mut Session,
    ctx: &mut Ctx,
    path: &str,
) -> Result<Reply, Refusal> {
    let req = session.req_header();
    match path {
        USER_PATH | "/.portcullis" => user_page(state, runtime, req, ctx).await,
        HOST_CALLBACK_PATH | "/.portcullis/callback" => {
            only_get(req)?;
            host_callback(state, runtime, req, ctx)
        }
        SIGN_OUT_PATH => sign_out(state, runtime, req, ctx).await,
        LOGIN_API_PATH => login_api(state, runtime, req, ctx),
        JWKS_PATH => Ok(jwks(state)),
        _ => Err(Refusal::NotFound),
    }
}

fn only_get(req: &RequestHeader) -> Result<(), Refusal> {
    match req.method {
        http::Method::GET | http::Method::HEAD => Ok(()),
        _ => Err(Refusal::MethodNotAllowed),
    }
}

/// One query parameter; several of the same name are refused as ambiguous.
fn query_param(req: &RequestHeader, name: &'static str) -> Result<Option<String>, Refusal> {
    let Some(query) = req.uri.query() else {
        return Ok(None);
    };
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(Refusal::BadRequest(Malformed::RepeatedParameter(name)));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

fn jwks(state: &State) -> Reply {
    Reply::new(
        200,
        "application/json",
        state.assertion_signer.jwks_json().to_string(),
    )
}

async fn sign_in(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<Reply, Refusal> {
    let now = now_unix();
    let returns = match query_param(req, REDIRECT_PARAM)? {
        None => SignInReturn::AuthenticateHost {
            redirect_uri: format!("{}{}", runtime.authenticate_origin, USER_PATH),
        },
        Some(raw) => {
            let full = Url::parse(&format!(
                "{}{}",
                runtime.authenticate_origin,
                req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            ))
            .map_err(|_| Refusal::BadRequest(Malformed::SignInUrl))?;
            state
                .url_signer
                .verify(&full, now)
                .inspect_err(|e| info!(error = %e, "refused sign-in link"))?;
            let programmatic = query_param(req, PROGRAMMATIC_PARAM)?.as_deref() == Some("true");
            let allowed = |host: &str, _port: Option<u16>| !programmatic || is_loopback_host(host);
            let url = validate_redirect(&raw, &allowed)?;
            // Back only to an authority Portcullis serves: host and port, the scheme's default
            // when the URL names none.
            let (host, port) = runtime.authority_of(&url);
            if !programmatic && !runtime.serves(&host, port) {
                return Err(Refusal::BadRequest(Malformed::ReturnAddressNotServed));
            }
            if programmatic {
                // The token goes back to the command line, sealed for the host that asked.
                let scope = query_param(req, SCOPE_PARAM)?
                    .filter(|s| !s.is_empty())
                    .ok_or(Refusal::BadRequest(Malformed::MissingParameter(
                        SCOPE_PARAM,
                    )))?;
                SignInReturn::Programmatic {
                    redirect_uri: url.to_string(),
                    scope,
                }
            } else {
                let binding = query_param(req, BINDING_PARAM)?
                    .as_deref()
                    .and_then(BindingDigest::parse);
                let returns = sign_in_return(runtime, &url, binding)?;
                // Already signed in on the authenticate host: hand the same session to the
                // route host, so that one sign-out (which deletes it) ends it on every host.
                let scope = runtime.session_scope(&ctx.request.host, ctx.request.port);
                if let Some(current) =
                    load_session(state, runtime, req, &scope, &mut ctx.found.bearer, now)
                        .await
                        .ok()
                        .flatten()
                {
                    return return_to(state, &current.id, &returns, now);
                }
                returns
            }
        }
    };
    let provider = state
        .oidc()
        .await
        .ok_or(Refusal::Unavailable(Dependency::IdentityProvider))?;
    let (idp_url, login) = provider.authorize_url_for(returns.redirect_uri(), now);
    let sealed = SignInFlow { login, returns }.seal(&state.cipher);
    let mut reply = Reply::redirect(idp_url.as_str());
    reply.header(
        header::SET_COOKIE,
        runtime.login_state_cookie().set_cookie(&sealed),
    );
    Ok(reply)
}

/// Where a browser sign-in that returns to `url` goes: the authenticate host itself, or a
/// route host through a handoff bound to the browser whose binding digest the link carries
/// (required: a route host always puts it in the links it sends browsers to).
fn sign_in_return(
    runtime: &Runtime,
    target: &Url,
    binding: Option<BindingDigest>,
) -> Result<SignInReturn, Refusal> {
    let (host, port) = runtime.authority_of(target);
    if runtime.is_authenticate(&host, port) {
        return Ok(SignInReturn::AuthenticateHost {
            redirect_uri: target.to_string(),
        });
    }
    let authority = format!("{host}:{port}");
    Ok(SignInReturn::RouteHost {
        redirect_uri: target.to_string(),
        authority,
        binding: binding.ok_or(Refusal::BadRequest(Malformed::BindingMissing))?,
    })
}

async fn oauth_callback(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<Reply, Refusal> {
    let now = now_unix();
    let login_cookie = runtime.login_state_cookie();
    let flow = find_cookie(req.headers.get_all(header::COOKIE), &login_cookie.name)
        .and_then(|c| SignInFlow::open(&state.cipher, c))
        .ok_or(Refusal::BadRequest(Malformed::LoginStateLost))?;
    if let Some(error) = query_param(req, "error")? {
        state
            .metrics
            .sign_ins
            .with_label_values(&["idp_error"])
            .inc();
        let description = query_param(req, "error_description")?.unwrap_or_default();
        info!(request_id = %ctx.request_id, error = %error, "identity provider refused the sign-in");
        return Err(Refusal::SignInFailed(SignInFailure::IdpRefused {
            error,
            description,
        }));
    }
    let code = query_param(req, "code")?.ok_or(Refusal::BadRequest(Malformed::NoCode))?;
    let returned_state =
        query_param(req, "state")?.ok_or(Refusal::BadRequest(Malformed::NoState))?;
    let iss = query_param(req, "iss")?;
    let provider = state
        .oidc()
        .await
        .ok_or(Refusal::Unavailable(Dependency::IdentityProvider))?;
    let ttl = runtime.config.cookie.expire.as_secs() as i64;
    let session = provider
        .exchange(
            &code,
            &returned_state,
            iss.as_deref(),
            &flow.login,
            now,
            ttl,
        )
        .await
        .inspect_err(|e| {
            state.metrics.sign_ins.with_label_values(&["failure"]).inc();
            warn!(request_id = %ctx.request_id, error = %e, "sign-in failed");
        })?;
    state.sessions.put(&session).await.map_err(|e| {
        warn!(error = %e, "cannot store the new session");
        Refusal::Unavailable(Dependency::SessionStore)
    })?;
    state.metrics.sign_ins.with_label_values(&["success"]).inc();
    info!(request_id = %ctx.request_id, user = %session.user_id, email = %session.email, "signed in");

    let sealed_for = |scope: &str| SessionCookie::for_session(&session, scope).seal(&state.cipher);
    let mut reply = match &flow.returns {
        SignInReturn::Programmatic {
            redirect_uri,
            scope,
        } => {
            let mut back = Url::parse(redirect_uri)
                .map_err(|_| Refusal::BadRequest(Malformed::ReturnAddressInvalid))?;
            back.query_pairs_mut()
                .append_pair(TOKEN_PARAM, &sealed_for(scope));
            Reply::redirect(back.as_str())
        }
        browser => {
            // The authenticate host keeps the session too, with its own scope, so that signing
            // in on another route host reuses it (see `sign_in`) instead of starting a second.
            let mut reply = return_to(state, &session.id, browser, now)?;
            let scope = runtime.session_scope(&ctx.request.host, ctx.request.port);
            reply.header(
                header::SET_COOKIE,
                runtime.session_cookie.set_cookie(&sealed_for(&scope)),
            );
            reply
        }
    };
    reply.header(header::SET_COOKIE, login_cookie.clear_cookie());
    Ok(reply)
}

/// The redirect that takes session `session_id` back where a browser sign-in returns: directly
/// to a page of the authenticate host (whose cookie the caller sets), otherwise through a
/// single-use handoff to the route host's callback, bound to the browser's binding. A
/// programmatic sign-in is the caller's (its token goes in the URL), never passed here.
fn return_to(
    state: &State,
    session_id: &str,
    returns: &SignInReturn,
    now: i64,
) -> Result<Reply, Refusal> {
    let SignInReturn::RouteHost {
        redirect_uri,
        authority,
        binding,
    } = returns
    else {
        return Ok(Reply::redirect(returns.redirect_uri()));
    };
    let target = Url::parse(redirect_uri)
        .map_err(|_| Refusal::BadRequest(Malformed::ReturnAddressInvalid))?;
    let handoff = Handoff::new(
        session_id.to_owned(),
        redirect_uri.as_str(),
        authority.as_str(),
        binding.clone(),
        now,
    )
    .seal(&state.cipher);
    let mut next = target.clone();
    next.set_path(HOST_CALLBACK_PATH);
    next.set_query(None);
    next.set_fragment(None);
    next.query_pairs_mut().append_pair(HANDOFF_PARAM, &handoff);
    Ok(Reply::redirect(next.as_str()))
}

fn host_callback(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<Reply, Refusal> {
    let now = now_unix();
    let invalid = || Refusal::BadRequest(Malformed::HandoffInvalid);
    let token = query_param(req, HANDOFF_PARAM)?.ok_or_else(invalid)?;
    let authority = format!("{}:{}", ctx.request.host, ctx.request.port);
    let binding_cookie = runtime.session_cookie.binding_cookie_name();
    let binding = find_cookie(req.headers.get_all(header::COOKIE), &binding_cookie);
    // A link minted for another browser (copied, or sent by someone else) signs this one in
    // as nobody (400), and stays unused for the browser it was minted for.
    let handoff = Handoff::redeem(
        &state.cipher,
        &token,
        now,
        &authority,
        binding,
        &state.replay,
    )
    .map_err(|e| {
        warn!(request_id = %ctx.request_id, error = %e, "handoff token refused");
        invalid()
    })?;
    let target = Url::parse(&handoff.redirect_uri).map_err(|_| invalid())?;
    // A token minted for one host never sets a cookie on another, nor sends the browser to
    // another scheme (the listener's is the only one a return URL may have).
    let (host, port) = runtime.authority_of(&target);
    let scheme = if state.tls { "https" } else { "http" };
    if target.scheme() != scheme || host != ctx.request.host || port != ctx.request.port {
        warn!(request_id = %ctx.request_id, "handoff token presented on the wrong host");
        return Err(invalid());
    }
    let cookie = SessionCookie {
        session_id: handoff.session_id,
        scope: runtime
            .session_scope(&ctx.request.host, ctx.request.port)
            .into_owned(),
        issued_at: now,
        expires_at: now + runtime.config.cookie.expire.as_secs() as i64,
    }
    .seal(&state.cipher);
    let mut reply = Reply::redirect(target.as_str());
    reply.header(
        header::SET_COOKIE,
        runtime.session_cookie.set_cookie(&cookie),
    );
    // Its handoff is used: the binding has served.
    reply.header(
        header::SET_COOKIE,
        runtime.session_cookie.clear_binding_cookie(),
    );
    Ok(reply)
}

async fn sign_out(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<Reply, Refusal> {
    // A GET (a link, an image, a prefetch) changes nothing: it shows the button that POSTs.
    match req.method {
        http::Method::GET | http::Method::HEAD => return Ok(Reply::html(200, pages::sign_out())),
        http::Method::POST => {}
        _ => return Err(Refusal::MethodNotAllowed),
    }
    if !same_site(req, state.tls, &ctx.request.authority) {
        return Err(Refusal::CrossSite);
    }
    let now = now_unix();
    // The id token is only a hint for the IdP; a store outage must not keep anyone signed in,
    // so the deletion below is what decides the answer.
    let scope = runtime.session_scope(&ctx.request.host, ctx.request.port);
    let current = load_session(state, runtime, req, &scope, &mut ctx.found.bearer, now)
        .await
        .ok()
        .flatten();
    let session_id = current.as_ref().map(|s| s.id.to_string()).or_else(|| {
        let cookie = find_cookie(
            req.headers.get_all(header::COOKIE),
            &runtime.config.cookie.name,
        )?;
        SessionCookie::open(&state.cipher, cookie, now, &scope).map(|c| c.session_id)
    });
    // The cache holds no tokens: read the ID token from the store before the deletion.
    let id_token = match &current {
        Some(s) => state
            .sessions
            .full(&s.id, now)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.id_token),
        None => None,
    };
    if let Some(id) = &session_id {
        state.sessions.delete(id).await.map_err(|e| {
            warn!(error = %e, "sign-out: cannot delete the session");
            Refusal::Unavailable(Dependency::SessionStoreAtSignOut)
        })?;
        state.assertions.invalidate_session(id);
        info!(request_id = %ctx.request_id, session = %id, "signed out");
    }
    let signed_out = format!("{}{}", runtime.authenticate_origin, SIGNED_OUT_PATH);
    let end_session = match state.oidc().await {
        Some(p) => p.end_session_url(id_token.as_deref(), Some(&signed_out)),
        None => None,
    };
    let mut reply = match end_session {
        Some(url) => Reply::redirect(url.as_str()),
        None => Reply::html(200, pages::signed_out()),
    };
    reply.header(header::SET_COOKIE, runtime.session_cookie.clear_cookie());
    Ok(reply)
}

/// Whether a state-changing request comes from this site. A browser says where a request
/// comes from: refused when `Sec-Fetch-Site` names another site, or when `Origin` is not this
/// request's own (`scheme://authority`); a request with neither (curl, command-line clients)
/// is no cross-site browser request and goes through.
fn same_site(req: &RequestHeader, tls: bool, authority: &str) -> bool {
    let (scheme, default_port) = if tls {
        ("https://", ":443")
    } else {
        ("http://", ":80")
    };
    let own = authority.strip_suffix(default_port).unwrap_or(authority);
    let from_here = |origin: &http::HeaderValue| {
        origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix(scheme))
            .map(|a| a.strip_suffix(default_port).unwrap_or(a))
            .is_some_and(|a| a.eq_ignore_ascii_case(own))
    };
    req.headers
        .get_all("sec-fetch-site")
        .iter()
        .all(|v| matches!(v.as_bytes(), b"same-origin" | b"same-site" | b"none"))
        && req.headers.get_all(header::ORIGIN).iter().all(from_here)
}

async fn user_page(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<Reply, Refusal> {
    only_get(req)?;
    let now = now_unix();
    let scope = runtime.session_scope(&ctx.request.host, ctx.request.port);
    let Some(current) =
        load_session(state, runtime, req, &scope, &mut ctx.found.bearer, now).await?
    else {
        if ctx.answers_json() {
            return Err(Refusal::Unauthorized);
        }
        let here = format!(
            "{}://{}{}",
            if state.tls { "https" } else { "http" },
            ctx.request.authority,
            USER_PATH
        );
        return Err(send_to_sign_in(state, runtime, req, &here, now));
    };
    ctx.found.session = Some(Arc::clone(&current));
    ctx.outcome = Outcome::Allow;
    let s = &*current;
    if ctx.request.json {
        let claims = s.identity.claims_json();
        let body = serde_json::json!({
            "user": s.user_id(),
            "email": s.email(),
            "name": s.name(),
            "groups": s.identity.groups().iter().map(|g| &**g).collect::<Vec<&str>>(),
            "claims": claims,
            "session_id": &*s.id,
            "issued_at": s.issued_at,
            "expires_at": s.expires_at,
        });
        return Ok(Reply::json(200, &body));
    }
    let sign_out = format!(
        "{}://{}{}",
        if state.tls { "https" } else { "http" },
        ctx.request.authority,
        SIGN_OUT_PATH
    );
    Ok(Reply::html(200, pages::user(&current, &sign_out, now)))
}

/// Programmatic login: answers with a sign-in URL that, once completed in a browser, sends
/// the command-line client's loopback listener a session token for this host (its scope is a
/// signed parameter of the link), served on every route host and on the authenticate host.
fn login_api(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    ctx: &Ctx,
) -> Result<Reply, Refusal> {
    only_get(req)?;
    let raw = query_param(req, REDIRECT_PARAM)?.ok_or(Refusal::BadRequest(
        Malformed::MissingParameter(REDIRECT_PARAM),
    ))?;
    let url = validate_redirect(&raw, &|host, _| is_loopback_host(host))
        .map_err(|_| Refusal::BadRequest(Malformed::NotLoopback(REDIRECT_PARAM)))?;
    let scope = runtime.session_scope(&ctx.request.host, ctx.request.port);
    let link = signed_sign_in_url(
        state,
        runtime,
        url.as_str(),
        &[(PROGRAMMATIC_PARAM, "true"), (SCOPE_PARAM, &scope)],
        now_unix(),
    );
    Ok(Reply::text(200, link))
}
