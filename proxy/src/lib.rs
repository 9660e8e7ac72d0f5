//! Portcullis: an identity-aware access proxy built on Pingora.
//!
//! It sits between users and internal services, signs users in through their OpenID Connect
//! provider, and lets each request through only when its route's policy allows it. The
//! authorization happens in-process, inside Pingora's `request_filter`, against a cached view
//! of the session, so an allowed request costs no network round trip.
//!
//! The modules follow one request, in the order Pingora's phases reach them:
//!
//! - [`service`]: the Pingora `ProxyHttp` implementation, each phase handing its work on;
//! - [`ctx`]: the per-request state the phases share;
//! - [`decide`]: `request_filter`'s decision, the stages below in order;
//! - [`request`]: request validation (host, framing) and path normalization;
//! - [`authorize`]: route, session and policy: the one place a request is authorized;
//! - [`routes`]: the route table (host index, path matchers, upstream choice);
//! - [`authenticate`]: sign-in, callbacks, sign-out and the user page, served in-process;
//! - [`respond`]: refusals (typed reasons, their wording) and the pages Portcullis answers;
//! - [`upstream`]: the backend's peer and health, the request it gets, the route's deadline
//!   and the re-check of live streams;
//! - [`sessions`]: the session cache and its change-stream follower;
//!   [`identity_manager`]: renewal of sessions with the IdP;
//! - [`observe`]: metrics, the access and refusal log lines, the log writer;
//! - [`state`]: what is built once and shared (the runtime a reload swaps);
//! - [`config`]: the configuration file and its validated runtime form;
//! - [`server`], [`shutdown`], [`reload`], [`databroker`]: start-up, signals, hot reload, and
//!   the session store a proxy uses;
//! - before any request, a connection's [`proxy_protocol`] header and [`tls`] handshake, run by
//!   `request::head`;
//! - [`seed`], [`policy_test`]: the `sessions seed` and `policy test` commands.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod allocator;
pub mod authenticate;
pub mod authority;
pub mod authorize;
pub mod clock;
pub mod config;
pub mod ctx;
pub mod databroker;
pub mod decide;
pub mod identity_manager;
pub mod observe;
pub mod policy_test;
pub mod proxy_protocol;
pub mod reload;
pub mod request;
pub mod respond;
pub mod routes;
pub mod seed;
pub mod server;
pub mod service;
pub mod sessions;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod upstream;
