//! Directory trees on disk: removing one without ever following a symlink, and moving a freshly
//! unpacked tree into place at the checkout path.
//!
//! Invariants: removal opens every directory relative to its parent with `O_NOFOLLOW`, so a
//! symlink inside the tree (or the tree's own path being a symlink) removes the link, never what
//! it points to. Replacing the checkout first renames the old copy aside (a rename moves the
//! directory entry itself, whatever it is), so the new tree is in place even when the old copy
//! holds files only root can delete. System calls go through `nix`.

use crate::error::{Error, Result};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Removes `path` and everything below it without following symlinks. A missing path is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let parent_fd = openat(
        AT_FDCWD,
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", parent.display()), e.into()))?;
    match remove_at(parent_fd.as_fd(), name) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e.into())),
    }
}

fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        )),
        _ => Err(Error::io(
            format!("removing {}", path.display()),
            std::io::Error::other("not a removable path"),
        )),
    }
}

/// Removes the entry `name` in `dir`: unlinks it, or empties and removes it if it is a real
/// directory.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let mut listing = Dir::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        children.push((OsStr::from_bytes(n).to_owned(), entry.file_type()));
    }
    let fd = listing.as_fd();
    for (child, ty) in children {
        if ty == Some(Type::Directory) {
            remove_at(fd, &child)?;
        } else {
            match unlinkat(fd, child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => remove_at(fd, &child)?,
                Err(e) => return Err(e),
            }
        }
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

/// What [`replace_checkout`] did with the previous copy.
#[derive(Debug, PartialEq, Eq)]
pub enum OldCopy {
    /// There was none.
    Absent,
    /// Removed.
    Removed,
    /// Renamed aside to this path but not removed (the error says why).
    LeftAside(PathBuf, String),
}

/// Moves `fresh` to `checkout`, first getting any previous copy out of the way: it is renamed to
/// a sibling `.<name>.sdci-old-<tag>` and removed with [`remove_tree`]; if that fails (root-owned
/// files from sudo steps), `privileged_remove` (argv prefix, the path appended) is run.
pub fn replace_checkout(
    fresh: &Path,
    checkout: &Path,
    tag: &str,
    privileged_remove: &[String],
) -> Result<OldCopy> {
    let (parent, name) = split(checkout)?;
    let aside = parent.join(format!(".{}.sdci-old-{tag}", name.to_string_lossy()));
    let old = match std::fs::rename(checkout, &aside) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(Error::io(
                format!("moving the previous checkout {} aside", checkout.display()),
                e,
            ))
        }
    };
    std::fs::rename(fresh, checkout).map_err(|e| {
        let hint = if e.raw_os_error() == Some(Errno::EXDEV as i32) {
            "; jobs_dir and checkout_dir must be on the same file system"
        } else {
            ""
        };
        Error::io(
            format!("moving the unpacked tree to {}{hint}", checkout.display()),
            e,
        )
    })?;
    if !old {
        return Ok(OldCopy::Absent);
    }
    if remove_tree(&aside).is_ok() {
        return Ok(OldCopy::Removed);
    }
    let Some((program, args)) = privileged_remove.split_first() else {
        return Ok(OldCopy::LeftAside(
            aside,
            "no privileged_remove command".into(),
        ));
    };
    let status = std::process::Command::new(program)
        .args(args)
        .arg(&aside)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() && aside.symlink_metadata().is_err() => Ok(OldCopy::Removed),
        Ok(s) => Ok(OldCopy::LeftAside(
            aside,
            format!("{program} exited with {s} and the copy is still there"),
        )),
        Err(e) => Ok(OldCopy::LeftAside(
            aside,
            format!("cannot run {program}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir_all(victim.join("a/b")).unwrap();
        std::fs::write(victim.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, victim.join("a/link")).unwrap();
        remove_tree(&victim).unwrap();
        assert!(!victim.exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn removing_a_symlinked_path_removes_only_the_link() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(link.symlink_metadata().is_err());
        assert!(target.join("keep").exists());
        remove_tree(&t.path().join("missing")).unwrap();
    }

    #[test]
    fn replace_checkout_puts_the_fresh_tree_in_place_and_removes_the_old_one() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        std::fs::write(fresh.join("new"), b"n").unwrap();
        let checkout = t.path().join("securedrop-workstation");
        std::fs::create_dir(&checkout).unwrap();
        std::fs::write(checkout.join("old"), b"o").unwrap();
        let r = replace_checkout(&fresh, &checkout, "j1", &[]).unwrap();
        assert_eq!(r, OldCopy::Removed);
        assert!(checkout.join("new").exists() && !checkout.join("old").exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
