//! pier: a load-balancer gateway for bare-metal Kubernetes.
//!
//! See `docs/architecture.md` for how the modules fit together.

pub mod api;
pub mod arp;
pub mod bfd;
pub mod bgp;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod health;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod route;
pub mod store;
pub mod watch;
