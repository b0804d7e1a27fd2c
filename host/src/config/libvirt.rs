//! `[libvirt]`: the libvirt daemons (URIs), the client's timeouts and the guest's helper
//! programs. The table is the libvirt client's own type (`sdci_libvirt::LibvirtConfig`), so an
//! unknown key, an unknown domain type or a URI the client does not understand is refused when
//! the file is loaded, by every subcommand, not only when `serve` connects.

use sdci_libvirt::LibvirtConfig;

/// Load-time checks of `[libvirt]` serde cannot make: every URI is understood (transport,
/// socket, host) and every bound is positive.
pub(super) fn validate(cfg: &LibvirtConfig) -> Result<(), String> {
    cfg.targets().map_err(|e| format!("libvirt.uris: {e}"))?;
    let t = &cfg.timeouts;
    for (key, v) in [
        ("connect_secs", t.connect_secs),
        ("call_secs", t.call_secs),
        ("agent_secs", t.agent_secs),
        ("helper_secs", t.helper_secs),
    ] {
        if v == 0 {
            return Err(format!("libvirt.timeouts.{key} must be at least 1"));
        }
    }
    for (key, v) in [
        ("shell", &cfg.guest.shell),
        ("setsid", &cfg.guest.setsid),
        ("runuser", &cfg.guest.runuser),
        ("env", &cfg.guest.env),
    ] {
        if !v.starts_with('/') {
            return Err(format!(
                "libvirt.guest.{key} {v:?} must be an absolute path in the guest"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::readme_toml_block;
    use super::super::Config;
    use std::path::Path;

    /// README's "Pools on libvirt" block documents `[libvirt]`: it must parse, and the values it
    /// shows as defaults must be the defaults.
    #[test]
    fn the_readme_libvirt_block_parses_and_shows_the_defaults() {
        let c = Config::parse(
            &readme_toml_block("### Pools on libvirt"),
            Path::new("README.md"),
        )
        .unwrap();
        assert_eq!(c.libvirt, sdci_libvirt::LibvirtConfig::default());
        assert_eq!(c.pools["4.2"].backend, super::super::Backend::Libvirt);
        assert!(c.uses(super::super::Backend::Libvirt) && !c.uses(super::super::Backend::Vsphere));
    }

    #[test]
    fn an_absent_table_means_the_local_system_daemon() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.libvirt.uris, ["qemu:///system"]);
        assert_eq!(c.libvirt, sdci_libvirt::LibvirtConfig::default());
    }

    #[test]
    fn a_uri_the_client_cannot_use_is_refused_at_load_naming_the_key() {
        for (toml, want) in [
            ("[libvirt]\nuris = [\"qemu+tls://h/system\"]\n", "tls"),
            ("[libvirt]\nuris = []\n", "uris is empty"),
            (
                "[libvirt]\nuris = [\"qemu:///system?no_verify=1\"]\n",
                "no_verify",
            ),
            ("[libvirt.timeouts]\nagent_secs = 0\n", "agent_secs"),
            (
                "[libvirt.guest]\nsetsid = \"setsid\"\n",
                "libvirt.guest.setsid",
            ),
        ] {
            let e = Config::parse(toml, Path::new("host.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("host.toml"), "{want}: {e}");
        }
        let e = Config::parse("[libvirt]\nurl = \"x\"\n", Path::new("host.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("url"), "{e}");
    }

    #[test]
    fn pools_choose_their_backend_and_default_to_vsphere() {
        let c = Config::parse(
            "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
             [pools.\"4.3\"]\nprefix = \"kvm-4.3-\"\ngolden_snapshot = \"golden\"\n\
             backend = \"libvirt\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.pools["4.2"].backend, super::super::Backend::Vsphere);
        assert_eq!(c.pools["4.3"].backend, super::super::Backend::Libvirt);
        let e = Config::parse(
            "[pools.\"4.2\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\nbackend = \"xen\"\n",
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("xen"), "{e}");
    }

    #[test]
    fn overlapping_prefixes_on_different_backends_are_refused() {
        let e = Config::parse(
            "[pools.\"4.2\"]\nprefix = \"Qubes_\"\ngolden_snapshot = \"g\"\n\
             [pools.\"4.3\"]\nprefix = \"Qubes_4.3_\"\ngolden_snapshot = \"g\"\n\
             backend = \"libvirt\"\n",
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"4.2\"") && e.contains("\"4.3\""), "{e}");
        // The same overlap on one backend is the operator's business (it was always allowed).
        Config::parse(
            "[pools.\"4.2\"]\nprefix = \"Qubes_\"\ngolden_snapshot = \"g\"\n\
             [pools.\"4.3\"]\nprefix = \"Qubes_4.3_\"\ngolden_snapshot = \"g\"\n",
            Path::new("x"),
        )
        .unwrap();
    }
}
