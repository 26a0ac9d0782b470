//! Checks of the kind of an fd received from a peer, made before the fd is used.
//!
//! A peer can put any fd it holds into an `SCM_RIGHTS` message: a pipe where a memfd was
//! promised, an unsealed memfd that it later shrinks under our mapping (SIGBUS), a TCP socket
//! where a unix socket was promised. Each `expect_*` function proves what it can about an fd and
//! returns an error naming what was expected and what was found.
//!
//! Everything here works inside the worker sandbox: no `/proc`, no path lookups, only calls on
//! the fd itself (`fstat`, `fstatfs`, `fcntl(F_GET_SEALS)`, `getsockopt(SO_DOMAIN, SO_TYPE,
//! SO_ACCEPTCONN)`). A worker's seccomp profile must allow those for the fds it checks.

use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, SealFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType};

/// `TMPFS_MAGIC`: memfds (without `MFD_HUGETLB`) live on an internal tmpfs mount.
const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `HUGETLBFS_MAGIC`: memfds created with `MFD_HUGETLB`.
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;
/// `ANON_INODE_FS_MAGIC`: eventfd, timerfd, signalfd, epoll and other anonymous-inode fds.
const ANON_INODE_FS_MAGIC: u32 = 0x0904_1934;
/// `DMA_BUF_MAGIC`: dmabuf fds.
const DMA_BUF_MAGIC: u32 = 0x444d_4142;
/// `SOCKFS_MAGIC`.
const SOCKFS_MAGIC: u32 = 0x534f_434b;
/// `PIPEFS_MAGIC`.
const PIPEFS_MAGIC: u32 = 0x5049_5045;

/// Why a received fd was refused.
#[derive(Debug, thiserror::Error)]
pub enum FdCheckError {
    /// The fd is not of the kind expected.
    #[error("expected {expected}, found {found}")]
    WrongKind { expected: String, found: String },
    /// The fd is a memfd, but lacks seals the receiver relies on.
    #[error("memfd lacks required seals: required {required:?}, found {found:?}")]
    MissingSeals {
        required: SealFlags,
        found: SealFlags,
    },
    /// A query on the fd itself failed (e.g. `EBADF`, or a seccomp profile that forbids it).
    #[error("{call} on the fd failed: {errno}")]
    Syscall { call: &'static str, errno: Errno },
}

fn syscall(call: &'static str) -> impl FnOnce(Errno) -> FdCheckError {
    move |errno| FdCheckError::Syscall { call, errno }
}

fn wrong_kind(fd: BorrowedFd<'_>, expected: impl Into<String>) -> FdCheckError {
    FdCheckError::WrongKind {
        expected: expected.into(),
        found: describe(fd),
    }
}

/// The filesystem magic number of the fd's inode (`statfs.f_type`, which fits in 32 bits).
fn fs_magic(fd: BorrowedFd<'_>) -> Result<u32, FdCheckError> {
    let fs = rustix::fs::fstatfs(fd).map_err(syscall("fstatfs"))?;
    // The magic numbers are 32-bit; on 32-bit targets `f_type` is a signed 32-bit word.
    #[allow(clippy::unnecessary_cast)]
    Ok(fs.f_type as u32)
}

fn file_type(fd: BorrowedFd<'_>) -> Result<FileType, FdCheckError> {
    let st = rustix::fs::fstat(fd).map_err(syscall("fstat"))?;
    Ok(FileType::from_raw_mode(st.st_mode))
}

fn fs_name(magic: u32) -> String {
    match magic {
        TMPFS_MAGIC => "tmpfs".into(),
        HUGETLBFS_MAGIC => "hugetlbfs".into(),
        ANON_INODE_FS_MAGIC => "anon_inodefs".into(),
        DMA_BUF_MAGIC => "dmabuf".into(),
        SOCKFS_MAGIC => "sockfs".into(),
        PIPEFS_MAGIC => "pipefs".into(),
        other => format!("filesystem magic {other:#x}"),
    }
}

fn family_name(family: AddressFamily) -> String {
    match family {
        AddressFamily::UNIX => "AF_UNIX".into(),
        AddressFamily::INET => "AF_INET".into(),
        AddressFamily::INET6 => "AF_INET6".into(),
        AddressFamily::NETLINK => "AF_NETLINK".into(),
        other => format!("address family {}", other.as_raw()),
    }
}

fn type_name(ty: SocketType) -> String {
    match ty {
        SocketType::STREAM => "SOCK_STREAM".into(),
        SocketType::DGRAM => "SOCK_DGRAM".into(),
        SocketType::SEQPACKET => "SOCK_SEQPACKET".into(),
        SocketType::RAW => "SOCK_RAW".into(),
        other => format!("socket type {}", other.as_raw()),
    }
}

/// A short description of what `fd` is, for error messages; best effort, never fails.
pub fn describe(fd: BorrowedFd<'_>) -> String {
    let (kind, magic) = match (file_type(fd), fs_magic(fd)) {
        (Ok(kind), Ok(magic)) => (kind, magic),
        (Err(e), _) | (_, Err(e)) => return format!("an fd that cannot be examined ({e})"),
    };
    match kind {
        FileType::Fifo => "a pipe or FIFO".into(),
        FileType::Socket => {
            let domain = rustix::net::sockopt::socket_domain(fd);
            let ty = rustix::net::sockopt::socket_type(fd);
            match (domain, ty) {
                (Ok(d), Ok(t)) => {
                    let listening = match rustix::net::sockopt::socket_acceptconn(fd) {
                        Ok(true) => ", listening",
                        Ok(false) => ", not listening",
                        Err(_) => "",
                    };
                    format!("an {} {} socket{listening}", family_name(d), type_name(t))
                }
                _ => "a socket of unknown domain and type".into(),
            }
        }
        FileType::RegularFile => format!("a regular file on {}", fs_name(magic)),
        FileType::Directory => "a directory".into(),
        FileType::CharacterDevice => "a character device".into(),
        FileType::BlockDevice => "a block device".into(),
        FileType::Symlink => "a symbolic link".into(),
        // Anonymous inodes (eventfd, epoll, ...) and dmabufs have no file type bits.
        FileType::Unknown => format!("an inode without file type on {}", fs_name(magic)),
    }
}

/// Checks that `fd` is a memfd (a sealable shared-memory file) carrying at least the seals in
/// `required`; returns its size in bytes.
///
/// The size is read after the seals, so with `F_SEAL_SHRINK` (and `F_SEAL_GROW`) required it
/// is the size the file keeps for good: mapping that many bytes cannot later fault with SIGBUS.
/// A tmpfs file opened from `/dev/shm` also passes when it carries the seals; it behaves exactly
/// as a memfd, which is all the receiver relies on.
pub fn expect_memfd(fd: BorrowedFd<'_>, required: SealFlags) -> Result<u64, FdCheckError> {
    const EXPECTED: &str = "a memfd";
    if file_type(fd)? != FileType::RegularFile {
        return Err(wrong_kind(fd, EXPECTED));
    }
    let magic = fs_magic(fd)?;
    if magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC {
        return Err(wrong_kind(fd, EXPECTED));
    }
    let found = match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) => seals,
        Err(Errno::INVAL) => {
            return Err(FdCheckError::WrongKind {
                expected: EXPECTED.into(),
                found: format!("{} that does not support seals", describe(fd)),
            })
        }
        Err(errno) => {
            return Err(FdCheckError::Syscall {
                call: "fcntl(F_GET_SEALS)",
                errno,
            })
        }
    };
    if !found.contains(required) {
        return Err(FdCheckError::MissingSeals { required, found });
    }
    let st = rustix::fs::fstat(fd).map_err(syscall("fstat"))?;
    u64::try_from(st.st_size).map_err(|_| FdCheckError::WrongKind {
        expected: EXPECTED.into(),
        found: format!("a file of negative size {}", st.st_size),
    })
}

/// Checks that `fd` is an anonymous-inode fd, the kind an eventfd is.
///
/// Without `/proc/self/fdinfo` (absent in the sandbox) nothing on the fd itself tells an eventfd
/// from the other anonymous-inode kinds (timerfd, signalfd, epoll, userfaultfd, ...): they share
/// one filesystem and carry no file type. What this does prove is that the fd is no regular file,
/// memfd, pipe, socket or device, so it cannot be a channel to the outside or shared memory. An
/// anonymous inode of another kind makes the 8-byte eventfd reads and writes fail (`EINVAL`),
/// which the doorbell's user must treat as an error of that peer.
pub fn expect_eventfd(fd: BorrowedFd<'_>) -> Result<(), FdCheckError> {
    // The filesystem alone decides: kernels differ in the file type bits they give anonymous
    // inodes, but none of them lives anywhere else.
    const EXPECTED: &str = "an eventfd (an inode on anon_inodefs)";
    if fs_magic(fd)? != ANON_INODE_FS_MAGIC {
        return Err(wrong_kind(fd, EXPECTED));
    }
    Ok(())
}

/// Checks that `fd` is a socket of the given domain and type and, when `listening` is given,
/// that it is (or is not) listening for connections.
pub fn expect_socket(
    fd: BorrowedFd<'_>,
    domain: AddressFamily,
    ty: SocketType,
    listening: Option<bool>,
) -> Result<(), FdCheckError> {
    let expected = || {
        let state = match listening {
            Some(true) => ", listening",
            Some(false) => ", not listening",
            None => "",
        };
        format!("an {} {} socket{state}", family_name(domain), type_name(ty))
    };
    if file_type(fd)? != FileType::Socket {
        return Err(wrong_kind(fd, expected()));
    }
    let found_domain =
        rustix::net::sockopt::socket_domain(fd).map_err(syscall("getsockopt(SO_DOMAIN)"))?;
    let found_ty = rustix::net::sockopt::socket_type(fd).map_err(syscall("getsockopt(SO_TYPE)"))?;
    if found_domain != domain || found_ty != ty {
        return Err(wrong_kind(fd, expected()));
    }
    if let Some(want) = listening {
        let is = rustix::net::sockopt::socket_acceptconn(fd)
            .map_err(syscall("getsockopt(SO_ACCEPTCONN)"))?;
        if is != want {
            return Err(wrong_kind(fd, expected()));
        }
    }
    Ok(())
}

/// Checks that `fd` is a dmabuf (its inode lives on the dmabuf filesystem).
pub fn expect_dmabuf(fd: BorrowedFd<'_>) -> Result<(), FdCheckError> {
    if fs_magic(fd)? != DMA_BUF_MAGIC {
        return Err(wrong_kind(fd, "a dmabuf"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::fs::{MemfdFlags, SealFlags};

    fn memfd(size: u64, seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create(
            "fdcheck-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    fn ring_seals() -> SealFlags {
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
    }

    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
    }

    fn wrong_kind_found(err: FdCheckError) -> String {
        match err {
            FdCheckError::WrongKind { found, .. } => found,
            other => panic!("expected WrongKind, got {other:?}"),
        }
    }

    #[test]
    fn sealed_memfd_passes_and_reports_its_size() {
        let fd = memfd(12345, ring_seals());
        assert_eq!(expect_memfd(fd.as_fd(), ring_seals()).unwrap(), 12345);
        assert_eq!(
            expect_memfd(fd.as_fd(), SealFlags::SHRINK).unwrap(),
            12345,
            "a subset of the seals present is enough"
        );
    }

    #[test]
    fn unsealed_memfd_is_refused_naming_the_seals() {
        let fd = memfd(4096, SealFlags::GROW);
        match expect_memfd(fd.as_fd(), ring_seals()) {
            Err(FdCheckError::MissingSeals { required, found }) => {
                assert_eq!(required, ring_seals());
                assert_eq!(found, SealFlags::GROW);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn memfd_without_sealing_support_is_refused() {
        // Without MFD_ALLOW_SEALING the kernel sets F_SEAL_SEAL and nothing else.
        let fd = rustix::fs::memfd_create("no-sealing", MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(
            expect_memfd(fd.as_fd(), ring_seals()),
            Err(FdCheckError::MissingSeals { .. })
        ));
    }

    #[test]
    fn pipe_is_not_a_memfd() {
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let found = wrong_kind_found(expect_memfd(r.as_fd(), ring_seals()).unwrap_err());
        assert_eq!(found, "a pipe or FIFO");
    }

    #[test]
    fn eventfd_is_not_a_memfd_and_memfd_is_not_an_eventfd() {
        let ev = eventfd();
        assert!(expect_memfd(ev.as_fd(), SealFlags::empty()).is_err());
        let m = memfd(0, ring_seals());
        let found = wrong_kind_found(expect_eventfd(m.as_fd()).unwrap_err());
        assert_eq!(found, "a regular file on tmpfs");
    }

    #[test]
    fn eventfd_passes() {
        expect_eventfd(eventfd().as_fd()).unwrap();
    }

    #[test]
    fn pipe_and_socket_are_not_eventfds() {
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        assert!(expect_eventfd(r.as_fd()).is_err());
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(expect_eventfd(a.as_fd()).is_err());
    }

    #[test]
    fn seqpacket_pair_passes_as_unix_seqpacket_not_listening() {
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        expect_socket(
            a.as_fd(),
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            Some(false),
        )
        .unwrap();
        expect_socket(a.as_fd(), AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        assert!(expect_socket(
            a.as_fd(),
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            Some(true)
        )
        .is_err());
        assert!(expect_socket(a.as_fd(), AddressFamily::UNIX, SocketType::STREAM, None).is_err());
    }

    #[test]
    fn tcp_socket_is_not_a_unix_seqpacket() {
        let tcp = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let err = expect_socket(
            tcp.as_fd(),
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an AF_UNIX SOCK_SEQPACKET socket, found an AF_INET SOCK_STREAM socket, not listening"
        );
        expect_socket(
            tcp.as_fd(),
            AddressFamily::INET,
            SocketType::STREAM,
            Some(false),
        )
        .unwrap();
    }

    #[test]
    fn listening_tcp_socket_is_told_from_a_connected_one() {
        let tcp = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(
            &tcp,
            &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
        )
        .unwrap();
        rustix::net::listen(&tcp, 1).unwrap();
        expect_socket(
            tcp.as_fd(),
            AddressFamily::INET,
            SocketType::STREAM,
            Some(true),
        )
        .unwrap();
        assert!(expect_socket(
            tcp.as_fd(),
            AddressFamily::INET,
            SocketType::STREAM,
            Some(false)
        )
        .is_err());
    }

    #[test]
    fn memfd_is_not_a_dmabuf() {
        let m = memfd(4096, ring_seals());
        let err = expect_dmabuf(m.as_fd()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a dmabuf, found a regular file on tmpfs"
        );
        assert!(expect_dmabuf(eventfd().as_fd()).is_err());
    }

    #[test]
    fn non_socket_is_refused_as_socket() {
        let m = memfd(0, SealFlags::empty());
        assert!(
            expect_socket(m.as_fd(), AddressFamily::UNIX, SocketType::SEQPACKET, None).is_err()
        );
    }
}
