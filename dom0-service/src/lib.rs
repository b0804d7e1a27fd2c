//! `sdci-dom0`: the qrexec service `sdci.Run` and the `launch` command, in Qubes dom0.
//!
//! The most trusted program of sdci. It has no network stack (no tokio, no HTTP) and trusts
//! nothing that arrives from the dev VM: the caller, the job id and the archive are checked; the
//! steps come from dom0's own copy of the job file.
//!
//! Status: skeleton. The modules arrive with their issue (see ARCHITECTURE.md).
