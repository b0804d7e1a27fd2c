//! The one error type every backend returns, and the retry class the scheduler acts on.
//!
//! The variants are the ones the scheduler distinguishes (and that `sdci-vsphere` has always
//! returned, re-exported there as `VsphereError`); messages name no vendor: the backend's own
//! words travel in the fields (`Fault::kind`, `Transport::url`).

use std::time::Duration;

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// This VM is the problem (won't power on, the guest agent never came up): use another VM.
    RetryOtherVm,
    /// The hypervisor itself is busy or unreachable (503, dropped connection): try again later.
    RetryLater,
    /// Retrying cannot help (bad credentials, missing snapshot, configuration).
    GiveUp,
}

/// Each variant says what failed and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(
        "the hypervisor refused the login for user {user:?}: check the user and password file"
    )]
    LoginRefused { user: String },
    #[error("no VM named {name:?} on the hypervisor: check the pool names in the host config")]
    VmNotFound { name: String },
    #[error("VM {vm:?} has no snapshot named {snapshot:?}: check the pool's golden snapshot")]
    SnapshotNotFound { vm: String, snapshot: String },
    /// The in-guest agent (VMware Tools, the QEMU guest agent) did not come up.
    #[error("the guest agent of VM {vm:?} did not become ready within {waited:?}")]
    ToolsNotReady { vm: String, waited: Duration },
    #[error("VM {vm:?} did not power off within {waited:?} of a guest shutdown")]
    ShutdownTimeout { vm: String, waited: Duration },
    #[error("VM {vm:?} is waiting for an answer to a question: {question}")]
    VmQuestion { vm: String, question: String },
    #[error("{method} failed with {kind}: {message}")]
    Fault {
        method: String,
        /// The backend's fault name, e.g. vSphere `InvalidPowerState`, libvirt
        /// `VIR_ERR_OPERATION_INVALID`, guest agent `GuestExecFailed`.
        kind: String,
        message: String,
    },
    #[error("talking to the hypervisor at {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("the hypervisor answered {method} with HTTP {status}")]
    Http { method: String, status: u16 },
    #[error("unexpected answer to {method}: {message}")]
    Protocol { method: String, message: String },
    #[error("{what} timed out after {waited:?}")]
    Timeout { what: String, waited: Duration },
    #[error("the hypervisor configuration is not usable: {message}")]
    Config { message: String },
}

/// Fault kinds after which retrying cannot help, from every backend.
const GIVE_UP_KINDS: &[&str] = &[
    // vSphere
    "NotAuthenticated",
    "InvalidLogin",
    "NoPermission",
    "InvalidGuestLogin",
    "InvalidArgument",
    // libvirt
    "VIR_ERR_AUTH_FAILED",
    "VIR_ERR_AUTH_CANCELLED",
    "VIR_ERR_OPERATION_DENIED",
    "VIR_ERR_ACCESS_DENIED",
    "VIR_ERR_NO_SUPPORT",
    "VIR_ERR_INVALID_ARG",
    "VIR_ERR_XML_ERROR",
    "VIR_ERR_CONFIG_UNSUPPORTED",
    // every backend: an operation this backend does not have (`Hypervisor::clone_from_snapshot`)
    "NotSupported",
];

/// Fault kinds that mean "the hypervisor, not this VM, is in trouble": try again later.
const RETRY_LATER_KINDS: &[&str] = &[
    // vSphere
    "HostCommunication",
    "HostNotConnected",
    "RequestCanceled",
    // libvirt (a failed system call is usually one domain's problem: not listed)
    "VIR_ERR_RPC",
    "VIR_ERR_NO_CONNECT",
    "VIR_ERR_INVALID_CONN",
];

impl HypervisorError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::LoginRefused { .. }
            | Self::VmNotFound { .. }
            | Self::SnapshotNotFound { .. }
            | Self::Config { .. } => ErrorClass::GiveUp,
            Self::ToolsNotReady { .. }
            | Self::ShutdownTimeout { .. }
            | Self::VmQuestion { .. }
            | Self::Timeout { .. } => ErrorClass::RetryOtherVm,
            Self::Fault { kind, .. } => {
                if GIVE_UP_KINDS.contains(&kind.as_str()) {
                    ErrorClass::GiveUp
                } else if RETRY_LATER_KINDS.contains(&kind.as_str()) {
                    ErrorClass::RetryLater
                } else {
                    ErrorClass::RetryOtherVm
                }
            }
            Self::Transport { .. } | Self::Protocol { .. } => ErrorClass::RetryLater,
            Self::Http { status, .. } => {
                if *status >= 500 {
                    ErrorClass::RetryLater
                } else {
                    ErrorClass::GiveUp
                }
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: &str) -> HypervisorError {
        HypervisorError::Fault {
            method: "m".into(),
            kind: kind.into(),
            message: String::new(),
        }
    }

    #[test]
    fn fault_kinds_of_both_backends_map_to_their_retry_class() {
        assert_eq!(fault("InvalidGuestLogin").class(), ErrorClass::GiveUp);
        assert_eq!(fault("VIR_ERR_AUTH_FAILED").class(), ErrorClass::GiveUp);
        assert_eq!(fault("HostNotConnected").class(), ErrorClass::RetryLater);
        assert_eq!(fault("VIR_ERR_RPC").class(), ErrorClass::RetryLater);
        assert_eq!(fault("InvalidPowerState").class(), ErrorClass::RetryOtherVm);
        assert_eq!(fault("GuestExecFailed").class(), ErrorClass::RetryOtherVm);
    }

    #[test]
    fn messages_name_no_vendor() {
        let all = [
            HypervisorError::LoginRefused { user: "u".into() },
            HypervisorError::ToolsNotReady {
                vm: "v".into(),
                waited: Duration::from_secs(1),
            },
            HypervisorError::Transport {
                url: "qemu:///system".into(),
                message: "gone".into(),
            },
            HypervisorError::Http {
                method: "m".into(),
                status: 503,
            },
            HypervisorError::Config {
                message: "x".into(),
            },
        ];
        for e in all {
            let text = e.to_string();
            assert!(
                !text.contains("vSphere") && !text.contains("VMware"),
                "{text}"
            );
        }
    }
}
