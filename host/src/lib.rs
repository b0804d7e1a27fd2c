//! `sdci-host`: the orchestrator on the bastion.
//!
//! Turns signed GitHub webhooks into jobs in a durable SQLite queue, claims VMs from per-version
//! pools, drives them through vSphere, receives the agents' event streams and serves job pages.
//! It never calls the GitHub API itself: statuses go through the `sdci-agent` binary.
//!
//! Status: skeleton. The modules arrive with their issues (see ARCHITECTURE.md).
