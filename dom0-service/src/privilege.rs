//! Switching from root to the dom0 user before anything from the dev VM is read.
//!
//! Qubes 4.1 may start qrexec services as root (`research/qubes.md` §2.1); the archive must
//! never be unpacked as root. [`drop_to`] sets the supplementary groups, gid and uid of the named
//! user, checks that root cannot be regained, and sets `HOME`, `USER` and `LOGNAME`.

use crate::error::{Error, Result};
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user to run as when none is configured: the first member of the group `qubes` (what
/// qubesd uses), else `user` (the Qubes default).
pub fn default_user() -> String {
    let Ok(name) = CString::new("qubes") else {
        return "user".into();
    };
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: group is plain data filled by getgrnam_r; buf outlives every use of its pointers.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let r = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r == 0 && !out.is_null() && !grp.gr_mem.is_null() {
        // SAFETY: gr_mem is a NULL-terminated array of C strings inside buf.
        let first = unsafe { *grp.gr_mem };
        if !first.is_null() {
            // SAFETY: first points to a NUL-terminated string inside buf.
            let s = unsafe { CStr::from_ptr(first) }
                .to_string_lossy()
                .into_owned();
            if !s.is_empty() {
                return s;
            }
        }
    }
    "user".into()
}

/// Switches the whole process to `user`; returns their home directory. Call while the process
/// is single-threaded.
pub fn drop_to(user: &str) -> Result<PathBuf> {
    let fail = |why: String| Error::Privilege {
        user: user.to_owned(),
        why,
    };
    let cname = CString::new(user).map_err(|_| fail("the name contains a NUL byte".into()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data filled by getpwnam_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return Err(fail(
            "no such user; set `user` in dom0.toml to the dom0 login user".into(),
        ));
    }
    let (uid, gid) = (pw.pw_uid, pw.pw_gid);
    if uid == 0 {
        return Err(fail(
            "refusing to unpack as root; set `user` in dom0.toml to the dom0 login user".into(),
        ));
    }
    // SAFETY: pw_dir points to a NUL-terminated string inside buf.
    let home = PathBuf::from(
        unsafe { CStr::from_ptr(pw.pw_dir) }
            .to_string_lossy()
            .into_owned(),
    );
    let os = |what: &str| fail(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: plain calls with a valid C string and integer ids.
    unsafe {
        if libc::initgroups(cname.as_ptr(), gid) != 0 {
            return Err(os("initgroups"));
        }
        if libc::setgid(gid) != 0 {
            return Err(os("setgid"));
        }
        if libc::setuid(uid) != 0 {
            return Err(os("setuid"));
        }
        if libc::setuid(0) == 0 || libc::geteuid() == 0 {
            return Err(fail("root could be regained after setuid".into()));
        }
    }
    std::env::set_var("HOME", &home);
    std::env::set_var("USER", user);
    std::env::set_var("LOGNAME", user);
    Ok(home)
}
