//! Portcullis: an identity-aware access proxy built on Pingora.
//!
//! It sits between users and internal services, signs users in through their OpenID Connect
//! provider, and lets each request through only when its route's policy allows it. The
//! authorization happens in-process, inside Pingora's `request_filter`, against a cached view
//! of the session, so an allowed request costs no network round trip.
//!
//! - [`config`]: the configuration file and its validated runtime form;
//! - [`routes`]: the route table (host index, path matchers, upstream choice);
//! - [`path`]: request-path normalization, before any matching;
//! - [`service`]: the Pingora `ProxyHttp` implementation;
//! - [`authenticate`]: sign-in, callbacks, sign-out and the user page;
//! - [`sessions`]: the session cache and its change-stream follower;
//! - [`streams`]: the re-check of live websockets and streamed responses;
//! - [`deadline`], [`tripwire`]: the route's `timeout` for a whole response, and how a
//!   request in progress is ended from outside;
//! - [`request_log`], [`log_writer`]: the access and refusal lines written for every request,
//!   and the thread that writes all log lines;
//! - [`server`]: start-up and shutdown;
//! - [`seed`]: `portcullis sessions seed`, sessions and cookies for load tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod authenticate;
pub mod config;
pub mod databroker;
pub mod identity_manager;
pub mod observe;
pub mod policy_test;
pub mod reload;
pub mod request;
pub mod respond;
pub mod routes;
pub mod seed;
pub mod server;
pub mod service;
pub mod sessions;
pub mod state;
pub mod tls;
pub mod upstream;
