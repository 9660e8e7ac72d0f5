//! `request_filter`'s decision, the stages in order: validate the request, serve
//! Portcullis's own endpoints, authorize, and log a refusal.

use pingora::proxy::Session;

use crate::authenticate;
use crate::authorize::{authorize, Asker};
use crate::clock::now_unix;
use crate::ctx::Ctx;
use crate::observe::outcome::Outcome;
use crate::observe::request_log;
use crate::request;
use crate::respond::{Refusal, Reply};
use crate::state::{Runtime, State};

/// What the decision wants done with the request.
pub enum Flow {
    Proxy,
    Reply(Reply),
}

/// Decides what happens to a request. Everything here runs before any upstream is chosen.
pub async fn decide(
    state: &State,
    session: &mut Session,
    ctx: &mut Ctx,
    runtime: &Runtime,
) -> Result<Flow, Refusal> {
    request::validate(
        session,
        state.tls,
        &runtime.config.forwarding,
        &mut ctx.request,
    )?;

    // Portcullis's own endpoints (rare): they need the session mutably, so they get a copy.
    let path = session.req_header().uri.path();
    let authenticate_host = runtime.is_authenticate(&ctx.request.host, ctx.request.port);
    let own_endpoint = path.starts_with("/.portcullis/")
        || path == "/.portcullis"
        || path == authenticate::JWKS_PATH;
    if authenticate_host || own_endpoint {
        let path = path.to_owned();
        if authenticate_host {
            return authenticate::serve_authenticate_host(state, runtime, session, ctx, &path)
                .await
                .map(Flow::Reply);
        }
        if !runtime.routes.serves(&ctx.request.host, ctx.request.port) {
            return Err(Refusal::NotFound);
        }
        return authenticate::serve_route_host(state, runtime, session, ctx, &path)
            .await
            .map(Flow::Reply);
    }

    let req = session.req_header();
    let now = now_unix();
    let asker = Asker::from(&ctx.request);
    let (route, decision) = authorize(state, runtime, req, &asker, now, &mut ctx.found).await?;
    if decision.allowed {
        ctx.outcome = if route.policy.is_public() {
            Outcome::Public
        } else {
            Outcome::Allow
        };
        state.metrics.decided(ctx.outcome);
        return Ok(Flow::Proxy);
    }
    let refusal = if ctx.found.session.is_some() {
        Refusal::Forbidden {
            details: vec![decision.explain(&route.policy)],
        }
    } else if ctx.answers_json() {
        Refusal::Unauthorized
    } else {
        let original = format!(
            "{}://{}{}",
            if state.tls { "https" } else { "http" },
            ctx.request.authority,
            req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        authenticate::send_to_sign_in(state, runtime, req, &original, now)
    };
    let session = ctx.found.session.as_ref();
    request_log::refused(&request_log::Refused {
        request_id: &ctx.request_id,
        route: &route.name,
        user: session.map(|s| s.user_id()).unwrap_or(""),
        email: session.map(|s| s.email()).unwrap_or(""),
        decision: refusal.outcome().as_str(),
        reason: &decision.explain(&route.policy),
    });
    Err(refusal)
}
