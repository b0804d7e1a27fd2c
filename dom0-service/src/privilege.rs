//! Switching from root to the dom0 user before anything from the dev VM is read.
//!
//! Qubes 4.1 may start qrexec services as root (`research/qubes.md` §2.1); the archive must
//! never be unpacked as root. [`drop_to`] sets the supplementary groups, gid and uid of the named
//! user, checks that root cannot be regained, and sets `HOME`, `USER` and `LOGNAME`. Every
//! look-up and system call goes through `nix` (no `unsafe` here).

use crate::error::{Error, Result};
use nix::unistd::{self, Group, Uid, User};
use std::ffi::CString;
use std::path::PathBuf;

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    unistd::geteuid().is_root()
}

/// The user to run as when none is configured: the first member of the group `qubes` (what
/// qubesd uses), else `user` (the Qubes default).
pub fn default_user() -> String {
    match Group::from_name("qubes") {
        Ok(Some(g)) => g
            .mem
            .into_iter()
            .find(|m| !m.is_empty())
            .unwrap_or_else(|| "user".into()),
        _ => "user".into(),
    }
}

/// Switches the whole process to `user`; returns their home directory. Call while the process
/// is single-threaded.
pub fn drop_to(user: &str) -> Result<PathBuf> {
    let fail = |why: String| Error::Privilege {
        user: user.to_owned(),
        why,
    };
    let cname = CString::new(user).map_err(|_| fail("the name contains a NUL byte".into()))?;
    let pw = match User::from_name(user) {
        Ok(Some(pw)) => pw,
        Ok(None) => {
            return Err(fail(
                "no such user; set `user` in dom0.toml to the dom0 login user".into(),
            ))
        }
        Err(e) => return Err(fail(format!("looking the user up: {e}"))),
    };
    if pw.uid.is_root() {
        return Err(fail(
            "refusing to unpack as root; set `user` in dom0.toml to the dom0 login user".into(),
        ));
    }
    let os = |what: &'static str| move |e: nix::Error| fail(format!("{what}: {e}"));
    unistd::initgroups(&cname, pw.gid).map_err(os("initgroups"))?;
    unistd::setgid(pw.gid).map_err(os("setgid"))?;
    unistd::setuid(pw.uid).map_err(os("setuid"))?;
    if unistd::setuid(Uid::from_raw(0)).is_ok() || unistd::geteuid().is_root() {
        return Err(fail("root could be regained after setuid".into()));
    }
    std::env::set_var("HOME", &pw.dir);
    std::env::set_var("USER", user);
    std::env::set_var("LOGNAME", user);
    Ok(pw.dir)
}
