//! The host's ways out, each behind one type: GitHub through the `sdci-agent` binary
//! ([`github::GithubGateway`]), Slack's incoming webhook ([`slack`]), vSphere ([`vsphere`]:
//! connecting the client and the dom0 guest credentials) and the hypervisors the pools use
//! ([`backend::Backends`]: vSphere and/or libvirt behind one `Hypervisor`, routed by pool).
//!
//! Invariants: every call has a timeout; no secret (token, webhook URL, password) is ever logged
//! or put in an error message; this layer records nothing in the store — what to do about a
//! failure is the caller's decision.

pub mod backend;
pub mod github;
pub mod slack;
pub mod vsphere;

pub use github::{GatewayError, GatewayFailure, GithubGateway};
