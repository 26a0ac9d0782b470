//! New user, mount, pid, ipc and (for all but `lumen-net`) network namespaces, with an empty,
//! read-only root filesystem.
//!
//! Namespaces are an extra layer that some systems refuse to unprivileged users (Ubuntu 24.04's
//! AppArmor restriction on user namespaces, `user.max_user_namespaces = 0`): a refusal is recorded as
//! [`Layer::Unavailable`] with the reason, and the worker goes on with the guaranteed baseline
//! (no_new_privs, Landlock, seccomp, rlimits).

use std::ffi::CStr;
use std::io::Write;

use super::Policy;
use crate::msg::{Layer, SandboxReport};

/// Where the empty root is built before `pivot_root` moves it to `/`. Any existing directory serves:
/// the mount is private to our new mount namespace.
const NEW_ROOT_CANDIDATES: [&CStr; 3] = [c"/tmp", c"/mnt", c"/var/tmp"];

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Enters the namespaces `policy` wants, filling the namespace fields of `report`.
pub fn enter(policy: &Policy, report: &mut SandboxReport) {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();

    // No CLONE_NEWPID: it would move only future children (a worker has none) and, worse, the
    // kernel refuses CLONE_THREAD once pid_ns_for_children differs from the caller's own pid
    // namespace, so no worker could start a thread after lock-down.
    let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    if policy.own_network_namespace {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare(2) takes a flag word only; the process is single-threaded at this point, as
    // CLONE_NEWUSER requires.
    if unsafe { libc::unshare(flags) } != 0 {
        let why = errno_text();
        report.notes.push(format!(
            "namespaces unavailable (unshare with a new user namespace: {why}); running without user, mount, pid, ipc{} namespaces",
            if policy.own_network_namespace { ", network" } else { "" }
        ));
        if !policy.own_network_namespace {
            report.net_ns = Layer::NotInProfile;
        }
        return;
    }
    report.user_ns = Layer::On;
    // The worker keeps its host pid namespace (see above: unshare(CLONE_NEWPID) would hold only
    // children and forbid threads), and saying otherwise would be false. What stands in for it: no
    // /proc in the empty root, and seccomp plus Landlock's signal scope against signalling, tracing
    // or reading any other pid.
    report.pid_ns = Layer::Unavailable;
    report.notes.push(
        "pid namespace: the worker itself stays in the host's (a new one would hold only children, \
         which workers do not have, and would forbid threads); no /proc is mounted, and seccomp and \
         Landlock keep it from signalling or tracing other processes"
            .into(),
    );
    report.ipc_ns = Layer::On;
    report.net_ns = if policy.own_network_namespace {
        Layer::On
    } else {
        Layer::NotInProfile
    };

    if let Err(why) = write_id_maps(uid, gid) {
        // Without maps the process is "nobody" inside; mounting still works with the namespace's
        // capabilities, so this is only worth a note.
        report
            .notes
            .push(format!("uid/gid maps not written: {why}"));
    }

    match empty_root() {
        Ok(()) => report.mount_ns = Layer::On,
        Err(why) => report.notes.push(format!(
            "mount namespace entered but the empty root could not be built: {why}"
        )),
    }
}

/// Maps our own uid and gid to themselves: the worker keeps its identity, gains nothing.
fn write_id_maps(uid: u32, gid: u32) -> Result<(), String> {
    let write = |path: &str, text: String| -> Result<(), String> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{path}: {e}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", errno_text()))
    }
}

/// Replaces the root with an empty read-only tmpfs and detaches the host's filesystem.
fn empty_root() -> Result<(), String> {
    // SAFETY: mount(2) with null source/type/data pointers and a constant path; changes only our
    // private mount namespace.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check(rc, "making / private")?;

    let mut mounted_at = None;
    for dir in NEW_ROOT_CANDIDATES {
        // SAFETY: constant C strings; the tmpfs lands in our private mount namespace only.
        let rc = unsafe {
            libc::mount(
                c"lumen-empty-root".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k,nr_inodes=2,mode=0555".as_ptr().cast(),
            )
        };
        if rc == 0 {
            mounted_at = Some(dir);
            break;
        }
    }
    let new_root = mounted_at.ok_or_else(|| format!("mounting a tmpfs: {}", errno_text()))?;

    // SAFETY: chdir(2) with a constant path.
    let rc = unsafe { libc::chdir(new_root.as_ptr()) };
    check(rc, "chdir to new root")?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching "." then removes it.
    // SAFETY: raw pivot_root(2) with two constant paths.
    let rc =
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int };
    check(rc, "pivot_root")?;
    // SAFETY: umount2(2) with a constant path.
    let rc = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(rc, "detaching the old root")?;
    // SAFETY: chdir(2) with a constant path.
    let rc = unsafe { libc::chdir(c"/".as_ptr()) };
    check(rc, "chdir /")?;
    // SAFETY: remount of our own tmpfs, null source/type/data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    check(rc, "remounting the new root read-only")?;
    Ok(())
}
