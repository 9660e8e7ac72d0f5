//! The upstream side of a request: which backend and how to reach it ([`peer`], kept honest
//! by [`health`] checks), the request it is sent ([`request`], with the [`identity`] it
//! carries), and what may end a response early: the route's [`deadline`] and the re-check of
//! live [`streams`], both through a [`tripwire`] on the connection's socket. [`response`]
//! tells which of them a response needs.

pub mod deadline;
pub mod health;
pub mod identity;
pub mod peer;
pub mod request;
pub mod response;
pub mod streams;
pub mod tripwire;
