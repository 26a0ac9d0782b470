//! What the kernel says about a worker's confinement, read by the broker itself from `/proc/PID`.
//!
//! A worker reports its sandbox layers in its `Ready` message, but the broker trusts no worker: the
//! seccomp mode, no_new_privs, effective capabilities and uid come from `/proc/PID/status`, and
//! whether the worker has its own network namespace from comparing `/proc/PID/ns/net` with the
//! broker's. A field that is missing or malformed is an error, never a guess.

use std::path::Path;

use crate::supervisor::ProcEvidence;

/// Why `/proc/PID/status` could not be turned into [`ProcEvidence`].
#[derive(Debug, thiserror::Error)]
pub enum ProcStatusError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("field {0}: missing")]
    Missing(&'static str),
    #[error("field {field}: cannot parse {value:?}")]
    Malformed { field: &'static str, value: String },
}

/// Reads the evidence for process `pid`. `own_net_ns` is `None` when either namespace link is
/// unreadable (e.g. a non-dumpable worker in another user namespace).
pub fn read(pid: u32) -> Result<ProcEvidence, ProcStatusError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcStatusError::Read {
        path: path.clone(),
        source,
    })?;
    let mut evidence = parse_status(&text)?;
    evidence.own_net_ns = own_net_ns(pid);
    Ok(evidence)
}

/// Whether process `pid` is in a different network namespace than this process.
fn own_net_ns(pid: u32) -> Option<bool> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::read_link(Path::new("/proc/self/ns/net")).ok()?;
    Some(theirs != ours)
}

/// Parses the text of a `/proc/PID/status` file (`own_net_ns` is left `None`).
pub fn parse_status(text: &str) -> Result<ProcEvidence, ProcStatusError> {
    let seccomp = field(text, "Seccomp")?;
    let seccomp_mode = seccomp
        .parse::<u8>()
        .ok()
        .filter(|mode| *mode <= 2)
        .ok_or_else(|| malformed("Seccomp", seccomp))?;

    let nnp = field(text, "NoNewPrivs")?;
    let no_new_privs = match nnp {
        "0" => false,
        "1" => true,
        other => return Err(malformed("NoNewPrivs", other)),
    };

    let cap_eff = field(text, "CapEff")?;
    let cap_eff_zero = u64::from_str_radix(cap_eff, 16)
        .ok()
        .filter(|_| !cap_eff.is_empty() && cap_eff.len() <= 16)
        .ok_or_else(|| malformed("CapEff", cap_eff))?
        == 0;

    // "Uid:\treal\teffective\tsaved\tfilesystem"; the effective uid is the one that grants access.
    let uids = field(text, "Uid")?;
    let parsed: Vec<u32> = uids
        .split_whitespace()
        .map(str::parse::<u32>)
        .collect::<Result<_, _>>()
        .map_err(|_| malformed("Uid", uids))?;
    let uid = match parsed.as_slice() {
        [_real, effective, _saved, _fs] => *effective,
        _ => return Err(malformed("Uid", uids)),
    };

    Ok(ProcEvidence {
        seccomp_mode,
        no_new_privs,
        cap_eff_zero,
        uid,
        own_net_ns: None,
    })
}

/// The value of `Name:` (trimmed), which must appear exactly once.
fn field<'a>(text: &'a str, name: &'static str) -> Result<&'a str, ProcStatusError> {
    let mut found = None;
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if key == name {
                if found.is_some() {
                    return Err(malformed(name, "(appears twice)"));
                }
                found = Some(value.trim());
            }
        }
    }
    found.ok_or(ProcStatusError::Missing(name))
}

fn malformed(field: &'static str, value: &str) -> ProcStatusError {
    // Bounded: a status line is short, but the value is shown in logs.
    let value: String = value.chars().take(64).collect();
    ProcStatusError::Malformed { field, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOXED: &str = "Name:\tlumen-net\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn parses_a_sandboxed_workers_status() {
        let evidence = parse_status(SANDBOXED).expect("parses");
        assert_eq!(evidence.seccomp_mode, 2);
        assert!(evidence.no_new_privs);
        assert!(evidence.cap_eff_zero);
        assert_eq!(evidence.uid, 65534);
        assert_eq!(evidence.own_net_ns, None);
    }

    #[test]
    fn reports_capabilities_and_the_effective_uid() {
        let text = SANDBOXED
            .replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff")
            .replace("Uid:\t65534\t65534", "Uid:\t1000\t0")
            .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")
            .replace("Seccomp:\t2", "Seccomp:\t0");
        let evidence = parse_status(&text).expect("parses");
        assert!(!evidence.cap_eff_zero);
        assert_eq!(evidence.uid, 0);
        assert!(!evidence.no_new_privs);
        assert_eq!(evidence.seccomp_mode, 0);
    }

    #[test]
    fn rejects_missing_and_malformed_fields() {
        let missing = SANDBOXED.replace("Seccomp:\t2\n", "");
        assert!(matches!(
            parse_status(&missing),
            Err(ProcStatusError::Missing("Seccomp"))
        ));
        for (from, to, name) in [
            ("Seccomp:\t2", "Seccomp:\t7", "Seccomp"),
            ("NoNewPrivs:\t1", "NoNewPrivs:\tyes", "NoNewPrivs"),
            (
                "CapEff:\t0000000000000000",
                "CapEff:\t00000000000000000",
                "CapEff",
            ),
            ("CapEff:\t0000000000000000", "CapEff:\tzz", "CapEff"),
            ("Uid:\t65534\t65534\t65534\t65534", "Uid:\t1\t2", "Uid"),
            (
                "Uid:\t65534\t65534\t65534\t65534",
                "Uid:\t-1\t2\t3\t4",
                "Uid",
            ),
        ] {
            let text = SANDBOXED.replace(from, to);
            match parse_status(&text) {
                Err(ProcStatusError::Malformed { field, .. }) => assert_eq!(field, name),
                other => panic!("{to}: expected a malformed {name}, got {other:?}"),
            }
        }
        let twice = format!("{SANDBOXED}Seccomp:\t0\n");
        assert!(parse_status(&twice).is_err(), "a repeated field is refused");
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        for text in [
            "",
            ":",
            "Seccomp",
            "Seccomp:",
            "\u{0}\u{ff}:::\n\n",
            "Uid:\t\t\t\t",
        ] {
            assert!(parse_status(text).is_err());
        }
    }

    #[test]
    fn reads_this_process() {
        let evidence = read(std::process::id()).expect("own status is readable");
        assert_eq!(evidence.own_net_ns, Some(false), "same namespace as itself");
        assert_eq!(evidence.uid, rustix::process::geteuid().as_raw());
    }
}
