//! vSphere: connecting the vim25 client from the host's configuration, and the dom0 account
//! guest operations use. The client itself (and the `Hypervisor` contract the orchestration is
//! generic over) lives in the `sdci-vsphere` and `sdci-hypervisor` crates.

use crate::config::{read_secret, Config};
use crate::Result;
use sdci_vsphere::{GuestAuth, VsphereClient};

/// Logs in to the vSphere named in `[vsphere]` (the password read from its file).
pub async fn connect(cfg: &Config) -> Result<VsphereClient> {
    let vcfg = cfg.vsphere.client_config()?;
    Ok(VsphereClient::connect(vcfg).await?)
}

/// The dom0 guest credentials named in `[dom0]`.
pub fn guest_auth(cfg: &Config) -> Result<GuestAuth> {
    Ok(GuestAuth {
        user: cfg.dom0.user.clone(),
        password: read_secret(&cfg.dom0.password_file, "dom0 password")?,
    })
}
