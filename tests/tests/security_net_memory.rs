//! The host private key never reaches `lumen-net`: after TLS handshakes (TLS 1.3 and 1.2, each of
//! which needs a signature with the host key, which net asks the broker for), the test reads the
//! running net worker's memory through `/proc/PID/maps` and `/proc/PID/mem` and searches it for
//! the key's material: the PKCS#8 and PKCS#1 DER, a line of the PEM body, and the private exponent,
//! primes, CRT exponents and coefficient in big- and little-endian byte order (AWS-LC keeps BIGNUM
//! limbs little-endian), a 32-byte window of each.
//!
//! Controls that prove the search works: the same search over the broker's memory finds the key,
//! and over net's memory finds the host certificate (which net does hold).
//!
//! Needs root (or CAP_SYS_PTRACE) to read a non-dumpable process's memory; otherwise it says so and
//! skips.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lumen_tests::{worker, Broker};

/// Bytes searched for of each piece of key material.
const WINDOW: usize = 32;

/// One thing to look for.
struct Needle {
    what: String,
    bytes: [u8; WINDOW],
}

impl Needle {
    /// A window from the middle of `material` (the ends of DER are headers and public parts).
    fn middle_of(what: impl Into<String>, material: &[u8]) -> Result<Needle> {
        let what = what.into();
        if material.len() < WINDOW {
            bail!("{what}: only {} bytes", material.len());
        }
        let start = (material.len() - WINDOW) / 2;
        let mut bytes = [0u8; WINDOW];
        bytes.copy_from_slice(&material[start..start + WINDOW]);
        Ok(Needle { what, bytes })
    }
}

/// A DER element: (tag, contents, rest after it).
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first().context("DER: empty")?;
    let (&first, rest) = rest.split_first().context("DER: no length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            bail!("DER: bad length form");
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        bail!("DER: element of {len} bytes, {} left", rest.len());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// A named private integer of an RSA key, big-endian, without a sign byte.
type PrivateInteger = (&'static str, Vec<u8>);

/// The private integers of an RSA key from its PKCS#8 DER, and the PKCS#1 DER inside.
fn rsa_private_parts(pkcs8: &[u8]) -> Result<(Vec<u8>, Vec<PrivateInteger>)> {
    let (tag, info, _) = der_element(pkcs8)?;
    if tag != 0x30 {
        bail!("PKCS#8: not a SEQUENCE");
    }
    let (_, _version, rest) = der_element(info)?;
    let (_, _algorithm, rest) = der_element(rest)?;
    let (tag, pkcs1, _) = der_element(rest)?;
    if tag != 0x04 {
        bail!("PKCS#8: privateKey is not an OCTET STRING");
    }
    let (tag, mut fields, _) = der_element(pkcs1)?;
    if tag != 0x30 {
        bail!("PKCS#1: not a SEQUENCE");
    }
    let names = ["version", "n", "e", "d", "p", "q", "dp", "dq", "qinv"];
    let mut parts = Vec::new();
    for name in names {
        let (tag, value, rest) = der_element(fields)?;
        if tag != 0x02 {
            bail!("PKCS#1: {name} is not an INTEGER");
        }
        fields = rest;
        // Drop the sign byte DER adds before a high bit.
        let magnitude = value.strip_prefix(&[0]).unwrap_or(value);
        if !matches!(name, "version" | "n" | "e") {
            parts.push((name, magnitude.to_vec()));
        }
    }
    Ok((pkcs1.to_vec(), parts))
}

/// What was found in one process's memory.
struct Scan {
    found: Vec<bool>,
    bytes: u64,
    regions: usize,
    unreadable_regions: usize,
}

/// Why a process's memory could not be read at all.
enum ScanError {
    NotPermitted(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ScanError {
    fn from(e: anyhow::Error) -> ScanError {
        ScanError::Other(e)
    }
}

/// Searches every readable mapping of `pid` for each needle.
///
/// Each needle's 8-byte slices at offsets 0..8 go in a table keyed by their value; the memory is
/// walked one aligned 8-byte word at a time (any 32-byte occurrence covers an aligned word starting
/// in its first 8 bytes), and a table hit is confirmed by comparing the whole window.
fn scan(pid: u32, needles: &[Needle]) -> Result<Scan, ScanError> {
    let mut table: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
    for (index, needle) in needles.iter().enumerate() {
        for k in 0..8 {
            let word = u64::from_ne_bytes(needle.bytes[k..k + 8].try_into().unwrap_or_default());
            table.entry(word).or_default().push((index, k));
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| ScanError::Other(anyhow::anyhow!("reading /proc/{pid}/maps: {e}")))?;
    let mem = match std::fs::File::open(format!("/proc/{pid}/mem")) {
        Ok(mem) => mem,
        Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied) => {
            return Err(ScanError::NotPermitted(format!(
                "opening /proc/{pid}/mem: {e}"
            )))
        }
        Err(e) => return Err(ScanError::Other(anyhow::anyhow!("/proc/{pid}/mem: {e}"))),
    };
    let mut result = Scan {
        found: vec![false; needles.len()],
        bytes: 0,
        regions: 0,
        unreadable_regions: 0,
    };
    const CHUNK: u64 = 1 << 20;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = line.split_whitespace().nth(5).unwrap_or("");
        if !perms.starts_with('r') || matches!(name, "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
            continue;
        }
        let (start, end) = range
            .split_once('-')
            .and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .with_context(|| format!("bad maps line {line:?}"))?;
        result.regions += 1;
        // The last 32 bytes of the previous chunk lead the next one, so a window across a chunk
        // border is seen; 32 keeps every word aligned.
        let mut carry: Vec<u8> = Vec::new();
        let mut addr = start;
        while addr < end {
            let len = (end - addr).min(CHUNK) as usize;
            let mut buf = std::mem::take(&mut carry);
            let lead = buf.len();
            buf.resize(lead + len, 0);
            match mem.read_at(&mut buf[lead..], addr) {
                Ok(n) if n == len => {}
                // A mapping that cannot be read (a guard region, a device): skip the rest of it.
                _ => {
                    result.unreadable_regions += 1;
                    break;
                }
            }
            result.bytes += len as u64;
            let mut at = 0;
            while at + 8 <= buf.len() {
                let word = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default());
                if let Some(hits) = table.get(&word) {
                    for &(index, k) in hits {
                        let Some(begin) = at.checked_sub(k) else {
                            continue;
                        };
                        if buf.get(begin..begin + WINDOW) == Some(&needles[index].bytes[..]) {
                            result.found[index] = true;
                        }
                    }
                }
                at += 8;
            }
            carry = buf[buf.len().saturating_sub(WINDOW)..].to_vec();
            addr += len as u64;
        }
    }
    Ok(result)
}

/// Runs TLS handshakes with the net worker's HTTPS listener (python3's ssl module).
fn tls_handshakes(port: u16) -> Result<String> {
    let script = format!(
        r#"
import socket, ssl
for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", {port}), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            print(tls.version(), tls.cipher()[0], len(tls.getpeercert(binary_form=True)))
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .context("running python3 (needed for the TLS client)")?;
    if !out.status.success() {
        bail!(
            "TLS handshake failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_host_private_key_is_not_in_lumen_net_memory() -> Result<()> {
    let broker = Broker::start("netmem")?;
    let https = broker.port_base - 5;
    let handshakes = tls_handshakes(https)?;
    println!("handshakes with lumen-net:\n{handshakes}");
    assert!(
        handshakes.contains("TLSv1.3") && handshakes.contains("TLSv1.2"),
        "{handshakes}"
    );

    let key_pem = std::fs::read_to_string(broker.state_dir.path().join("state/host.key"))?;
    let key = pem::parse(&key_pem).context("host.key is not PEM")?;
    let cert_pem = std::fs::read_to_string(broker.state_dir.path().join("state/host.crt"))?;
    let cert = pem::parse(&cert_pem).context("host.crt is not PEM")?;
    let (pkcs1, parts) = rsa_private_parts(key.contents())?;

    let mut needles = vec![
        Needle::middle_of("PKCS#8 DER", key.contents())?,
        Needle::middle_of("PKCS#1 DER", &pkcs1)?,
    ];
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    needles.push(Needle::middle_of(
        "PEM body line",
        body.get(body.len() / 2).context("empty PEM")?.as_bytes(),
    )?);
    for (name, big_endian) in &parts {
        needles.push(Needle::middle_of(format!("{name} big-endian"), big_endian)?);
        let little: Vec<u8> = big_endian.iter().rev().copied().collect();
        needles.push(Needle::middle_of(format!("{name} little-endian"), &little)?);
    }
    let key_needles = needles.len();
    needles.push(Needle::middle_of("host certificate DER", cert.contents())?);

    let status = broker.wait_until(Duration::from_secs(10), "net running", |s| {
        worker(s, "Net").is_some_and(|w| w["pid"].as_u64().is_some())
    })?;
    let net_pid = worker(&status, "Net")
        .and_then(|w| w["pid"].as_u64())
        .context("net pid")? as u32;

    let (net, own) = match (scan(net_pid, &needles), scan(broker.pid(), &needles)) {
        (Ok(net), Ok(own)) => (net, own),
        (Err(ScanError::NotPermitted(why)), _) | (_, Err(ScanError::NotPermitted(why))) => {
            println!("SKIPPED: cannot read another process's memory here ({why}); run as root");
            return Ok(());
        }
        (Err(ScanError::Other(e)), _) | (_, Err(ScanError::Other(e))) => return Err(e),
    };
    let report = |scan: &Scan| -> String {
        needles
            .iter()
            .zip(&scan.found)
            .map(|(n, f)| format!("  {:<24} {}", n.what, if *f { "FOUND" } else { "-" }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!(
        "broker pid {}: {} MiB in {} regions ({} unreadable)\n{}",
        broker.pid(),
        own.bytes >> 20,
        own.regions,
        own.unreadable_regions,
        report(&own)
    );
    println!(
        "lumen-net pid {net_pid}: {} MiB in {} regions ({} unreadable)\n{}",
        net.bytes >> 20,
        net.regions,
        net.unreadable_regions,
        report(&net)
    );

    // Controls: the search finds the key where it is, and reads net's memory for real.
    let found_in_broker: Vec<&str> = needles[..key_needles]
        .iter()
        .zip(&own.found)
        .filter(|(_, f)| **f)
        .map(|(n, _)| n.what.as_str())
        .collect();
    assert!(
        found_in_broker.contains(&"PEM body line"),
        "control failed: the broker's memory should hold the key PEM; found {found_in_broker:?}"
    );
    assert!(
        found_in_broker.iter().any(|w| w.ends_with("little-endian")),
        "control failed: the broker's AWS-LC key should hold little-endian limbs; found {found_in_broker:?}"
    );
    assert!(
        net.found[key_needles],
        "control failed: lumen-net's memory should hold the host certificate"
    );

    let leaked: Vec<&str> = needles[..key_needles]
        .iter()
        .zip(&net.found)
        .filter(|(_, f)| **f)
        .map(|(n, _)| n.what.as_str())
        .collect();
    assert!(
        leaked.is_empty(),
        "host key material in lumen-net's memory: {leaked:?}"
    );
    Ok(())
}
