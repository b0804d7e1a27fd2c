//! The few libvirt XML documents sdci reads or writes: snapshot descriptions (name, parent,
//! creation time), the guest agent channel's state in a domain description, whether the
//! capabilities offer KVM, and the domain and snapshot descriptions sdci defines itself.
//!
//! Invariant: reading looks only at the elements named here, at their exact place in the tree
//! (a snapshot's own `<name>`, not the `<name>` of the domain copy inside it); text written into
//! XML is escaped.

use crate::config::DomainType;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a `<domainsnapshot>` says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotXml {
    pub name: String,
    pub parent: Option<String>,
    pub created: Option<SystemTime>,
    /// The domain state captured (`shutoff`, `running`, `disk-snapshot`).
    pub state: String,
}

impl SnapshotXml {
    /// Whether the snapshot holds the domain's memory: taken of a live domain as a full system
    /// checkpoint (an internal snapshot's state is then the domain's, `running` or `paused`),
    /// not of a powered-off one (`shutoff`) nor disk-only (`disk-snapshot`).
    pub fn has_memory(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "blocked" | "paused" | "shutdown" | "pmsuspended"
        )
    }
}

fn text_paths(xml: &str, wanted: &[&[&str]]) -> Result<Vec<Option<String>>, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut out = vec![None; wanted.len()];
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                path.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Ok(Event::End(_)) => {
                path.pop();
            }
            Ok(Event::Text(t)) => {
                if let Some(i) = wanted
                    .iter()
                    .position(|w| w.len() == path.len() && w.iter().zip(&path).all(|(a, b)| a == b))
                {
                    let s = t.unescape().map_err(|e| e.to_string())?;
                    out[i] = Some(s.into_owned());
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("bad XML: {e}")),
        }
    }
    Ok(out)
}

pub fn parse_snapshot(xml: &str) -> Result<SnapshotXml, String> {
    let v = text_paths(
        xml,
        &[
            &["domainsnapshot", "name"],
            &["domainsnapshot", "parent", "name"],
            &["domainsnapshot", "creationTime"],
            &["domainsnapshot", "state"],
        ],
    )?;
    let mut it = v.into_iter();
    let name = it
        .next()
        .flatten()
        .ok_or("snapshot description without a name")?;
    let parent = it.next().flatten();
    let created = it
        .next()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    Ok(SnapshotXml {
        name,
        parent,
        created,
        state: it.next().flatten().unwrap_or_default(),
    })
}

/// `state='connected'` on the `org.qemu.guest_agent.0` channel of a live domain description.
pub fn agent_connected(domain_xml: &str) -> bool {
    let mut reader = Reader::from_str(domain_xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.name().as_ref() == b"target" => {
                let attr = |k: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == k)
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                if attr(b"name").as_deref() == Some("org.qemu.guest_agent.0") {
                    return attr(b"state").as_deref() == Some("connected");
                }
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Whether the capabilities list a `kvm` domain type for x86_64 guests.
pub fn capabilities_offer_kvm(caps: &str) -> bool {
    caps.contains("<domain type='kvm'") || caps.contains("<domain type=\"kvm\"")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

pub fn snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot><name>{}</name><description>{}</description></domainsnapshot>",
        escape(name),
        escape(description)
    )
}

/// A snapshot that must hold the running domain's memory: libvirt refuses it for a domain
/// that is not running instead of taking one of its disks only.
pub fn memory_snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot><name>{}</name><description>{}</description>\
         <memory snapshot='internal'/></domainsnapshot>",
        escape(name),
        escape(description)
    )
}

/// A domain sdci defines (tests, the demo, a developer's box). Production pools are defined by
/// the operator; [`DomainSpec::nested_qubes`] is the shape issue 22 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// A qcow2 disk (internal snapshots live in it).
    pub disk: PathBuf,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// The serial console goes to this file.
    pub console_log: Option<PathBuf>,
    /// q35 + host CPU with `vmx`/`invtsc` + split irqchip (nested Xen/Qubes, as openQA runs it).
    pub nested: bool,
    /// More qcow2 disks, `vdb`, `vdc`, … in order (e.g. a test world's own disk; internal
    /// snapshots cover every disk).
    pub extra_disks: Vec<PathBuf>,
    /// QEMU user-mode networking restricted to the forwards listed (`None`: no network).
    pub user_net: Option<UserNet>,
}

/// A NIC on QEMU's user-mode network with `restrict=on`: the guest reaches nothing, not the host
/// and not the outside, except the listed forwards (QEMU's `guestfwd`), each of which runs a
/// host command per connection with the connection on its stdin/stdout. The guest is
/// `10.0.2.15/24`; libvirt has no element for `guestfwd`, so it is passed on QEMU's command
/// line (`<qemu:commandline>`), and the daemon's QEMU must be allowed to spawn (`seccomp_sandbox
/// = 0` in qemu.conf). The NIC sits in PCI slot `0x1e` of the root bus, clear of the slots
/// libvirt assigns its own devices from `0x2` up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub forwards: Vec<GuestForward>,
}

/// Connections from the guest to `ip:port` are handed to `command` (its own argv words, no
/// commas) on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestForward {
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    pub command: String,
}

impl UserNet {
    /// QEMU's `-netdev` value (commas inside the command doubled, as QEMU's option syntax wants).
    pub fn netdev(&self) -> String {
        let mut s = String::from("user,id=sdcinet,restrict=on,ipv6=off");
        for f in &self.forwards {
            s.push_str(&format!(
                ",guestfwd=tcp:{}:{}-cmd:{}",
                f.ip,
                f.port,
                f.command.replace(',', ",,")
            ));
        }
        s
    }
}

impl DomainSpec {
    /// Qubes OS under KVM as Qubes' openQA runs it: q35, `-cpu host,+vmx,+invtsc`,
    /// `kernel-irqchip=split`, 8 GiB, 4 vCPUs. Not verified on this project's machines (KVM
    /// guests stall there).
    pub fn nested_qubes(name: &str, disk: PathBuf) -> Self {
        Self {
            name: name.into(),
            memory_mib: 8192,
            vcpus: 4,
            disk,
            kernel: None,
            console_log: None,
            nested: true,
            extra_disks: Vec::new(),
            user_net: None,
        }
    }

    /// `ty` must be resolved (`kvm` or `qemu`); `Auto` is written as `qemu`.
    pub fn to_xml(&self, ty: DomainType) -> String {
        let ty = if ty == DomainType::Kvm { "kvm" } else { "qemu" };
        let machine = if self.nested { "q35" } else { "pc" };
        let mut os = format!("<type arch='x86_64' machine='{machine}'>hvm</type>");
        match &self.kernel {
            Some((k, i, cmdline)) => os.push_str(&format!(
                "<kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline>",
                escape(&k.to_string_lossy()),
                escape(&i.to_string_lossy()),
                escape(cmdline)
            )),
            None => os.push_str("<boot dev='hd'/>"),
        }
        let (cpu, features) = if self.nested {
            (
                "<cpu mode='host-passthrough'><feature policy='require' name='vmx'/><feature policy='require' name='invtsc'/></cpu>",
                "<acpi/><apic/><ioapic driver='qemu'/>",
            )
        } else {
            ("", "<acpi/>")
        };
        let console = match &self.console_log {
            Some(p) => format!(
                "<serial type='file'><source path='{}'/><target port='0'/></serial>",
                escape(&p.to_string_lossy())
            ),
            None => "<serial type='pty'><target port='0'/></serial>".into(),
        };
        let mut disks = String::new();
        for (i, d) in std::iter::once(&self.disk)
            .chain(&self.extra_disks)
            .enumerate()
        {
            let letter = char::from(b'a' + u8::try_from(i.min(25)).unwrap_or(25));
            disks.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{}'/><target dev='vd{letter}' bus='virtio'/></disk>",
                escape(&d.to_string_lossy())
            ));
        }
        let qemu_args = match &self.user_net {
            None => String::new(),
            Some(net) => format!(
                "<qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='{}'/>\
                 <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=sdcinet,addr=0x1e'/>\
                 </qemu:commandline>",
                escape(&net.netdev())
            ),
        };
        format!(
            "<domain type='{ty}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>{name}</name><memory unit='MiB'>{mem}</memory><vcpu>{vcpus}</vcpu>\
             <os>{os}</os><features>{features}</features>{cpu}\
             <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
             <devices>{disks}{console}\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             <memballoon model='none'/></devices>{qemu_args}</domain>",
            name = escape(&self.name),
            mem = self.memory_mib,
            vcpus = self.vcpus,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshots_own_name_is_read_not_its_domains() {
        let xml = "<domainsnapshot><name>update_1</name><state>shutoff</state>\
                   <parent><name>golden</name></parent><creationTime>1764576000</creationTime>\
                   <domain type='qemu'><name>vm-a</name></domain></domainsnapshot>";
        let s = parse_snapshot(xml).unwrap();
        assert_eq!(s.name, "update_1");
        assert_eq!(s.parent.as_deref(), Some("golden"));
        assert_eq!(s.state, "shutoff");
        assert_eq!(
            s.created,
            Some(UNIX_EPOCH + Duration::from_secs(1_764_576_000))
        );
        assert!(parse_snapshot("<domainsnapshot/>").is_err());
    }

    #[test]
    fn a_snapshot_of_a_live_domain_holds_memory_one_of_a_powered_off_or_disk_only_one_does_not() {
        let of = |state: &str| SnapshotXml {
            state: state.into(),
            ..SnapshotXml::default()
        };
        assert!(of("running").has_memory() && of("paused").has_memory());
        assert!(!of("shutoff").has_memory() && !of("disk-snapshot").has_memory());
        assert!(!of("").has_memory());
    }

    #[test]
    fn the_agent_channel_state_is_read_from_the_live_description() {
        let on = "<domain><devices><channel type='unix'><target type='virtio' \
                  name='org.qemu.guest_agent.0' state='connected'/></channel></devices></domain>";
        assert!(agent_connected(on));
        assert!(!agent_connected(
            &on.replace("'connected'", "'disconnected'")
        ));
        assert!(!agent_connected("<domain/>"));
    }

    #[test]
    fn extra_disks_follow_vda_and_user_networking_is_restricted_to_its_forwards() {
        let spec = DomainSpec {
            extra_disks: vec!["/d/world.qcow2".into()],
            user_net: Some(UserNet {
                forwards: vec![GuestForward {
                    ip: std::net::Ipv4Addr::new(10, 0, 2, 100),
                    port: 8470,
                    command: "/bin/relay 8470,x".into(),
                }],
            }),
            ..DomainSpec::nested_qubes("vm", "/d/root.qcow2".into())
        };
        let xml = spec.to_xml(DomainType::Kvm);
        assert!(xml.contains("<source file='/d/root.qcow2'/><target dev='vda'"));
        assert!(xml.contains("<source file='/d/world.qcow2'/><target dev='vdb'"));
        assert!(xml.contains(
            "<qemu:arg value='user,id=sdcinet,restrict=on,ipv6=off,\
             guestfwd=tcp:10.0.2.100:8470-cmd:/bin/relay 8470,,x'/>"
        ));
        let none = DomainSpec::nested_qubes("vm", "/d/root.qcow2".into()).to_xml(DomainType::Kvm);
        assert!(!none.contains("qemu:commandline") && !none.contains("<interface"));
    }

    #[test]
    fn written_text_is_escaped() {
        assert_eq!(
            snapshot_xml("a<b", "x & 'y'"),
            "<domainsnapshot><name>a&lt;b</name><description>x &amp; &apos;y&apos;</description></domainsnapshot>"
        );
    }
}
