//! `sdci-agent`: the only program that talks to GitHub.
//!
//! In sd-dev it fetches the commit, streams a zstd tarball to dom0 over qrexec and relays the
//! events to the host; on the host it is the GitHub gateway `sdci-host` runs for statuses.
//!
//! Status: skeleton. The modules arrive with their issue (see ARCHITECTURE.md).
