//! Two network namespaces joined by a veth pair — a host and a client on a small LAN — for the
//! whole-system tests that put the broker and the Moonlight client on different hosts, plus
//! nftables packet loss on the client's side. All of it needs root (`ip netns`, `nft`); see
//! [`root_or_skip`].

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::{all_workers_running, bin, unique_port_base, Broker, ScratchDir};

/// The host's address on the veth pair (the broker binds it).
pub const HOST_ADDR: &str = "10.200.0.1";
/// The client's address on the veth pair.
pub const CLIENT_ADDR: &str = "10.200.0.2";

/// The nftables table the loss rules live in (inside the client's namespace only).
const LOSS_TABLE: &str = "lumen_loss";

/// Whether a test that needs root may run: `Ok(true)` as root; as another user `Ok(false)` with
/// the reason printed (the test then skips), unless `CI` is set — CI runs as root, so there a
/// missing privilege is a failure, not a skip.
pub fn root_or_skip(test: &str) -> Result<bool> {
    if rustix::process::geteuid().is_root() {
        return Ok(true);
    }
    let reason = format!("{test}: network namespaces and nftables need root");
    if std::env::var_os("CI").is_some() {
        bail!("{reason}; CI is set (CI runs as root), so this fails instead of skipping");
    }
    eprintln!("{reason}: skipped (run the tests as root)");
    Ok(false)
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A host and a client namespace on a veth pair (10.200.0.1/24 ↔ 10.200.0.2/24), both with
/// loopback up. Both namespaces (and with them the veth pair and any nftables rules) are
/// deleted on drop, also when a test panics.
pub struct LanPair {
    pub host: String,
    pub client: String,
    /// The veth ends, in the host and the client namespace.
    pub host_veth: String,
    pub client_veth: String,
}

impl LanPair {
    pub fn new() -> Result<LanPair> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes; the pid keeps parallel test binaries apart.
        let id = format!("{}{n}", std::process::id() % 100_000);
        let pair = LanPair {
            host: format!("lumen-h{id}"),
            client: format!("lumen-c{id}"),
            host_veth: format!("lh{id}"),
            client_veth: format!("lc{id}"),
        };
        // Leftovers of an earlier, killed run with the same pid would make `add` fail.
        let _ = pair.delete();
        pair.setup()?;
        Ok(pair)
    }

    fn setup(&self) -> Result<()> {
        let (veth_host, veth_client) = (&self.host_veth, &self.client_veth);
        run("ip", &["netns", "add", &self.host])?;
        run("ip", &["netns", "add", &self.client])?;
        run(
            "ip",
            &[
                "link",
                "add",
                veth_host,
                "netns",
                &self.host,
                "type",
                "veth",
                "peer",
                "name",
                veth_client,
                "netns",
                &self.client,
            ],
        )?;
        for (ns, veth, addr) in [
            (&self.host, veth_host, HOST_ADDR),
            (&self.client, veth_client, CLIENT_ADDR),
        ] {
            let cidr = format!("{addr}/24");
            run(
                "ip",
                &["-n", ns, "addr", "add", &cidr, "dev", veth.as_str()],
            )?;
            // A veth hands UDP GSO batches over whole, so a rule on the client's side would see
            // (and drop) a frame's whole batch as one packet. With one segment at most, the
            // batches are split into datagrams on the way out, as a real NIC puts them on the
            // wire, and loss hits single datagrams.
            run(
                "ip",
                &["-n", ns, "link", "set", veth.as_str(), "gso_max_segs", "1"],
            )?;
            run("ip", &["-n", ns, "link", "set", veth.as_str(), "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Moves both ends to other addresses (`host_cidr`, `client_cidr`): the old ones are removed,
    /// as when a host joins another network.
    pub fn readdress(&self, host_cidr: &str, client_cidr: &str) -> Result<()> {
        for (ns, veth, cidr) in [
            (&self.host, &self.host_veth, host_cidr),
            (&self.client, &self.client_veth, client_cidr),
        ] {
            run("ip", &["-n", ns, "addr", "flush", "dev", veth.as_str()])?;
            run("ip", &["-n", ns, "addr", "add", cidr, "dev", veth.as_str()])?;
        }
        Ok(())
    }

    /// `program` to be run inside namespace `ns` (`ip netns exec NS PROGRAM`); `ip` execs the
    /// program, so the child's pid is the program's.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Whether a TCP connection from inside namespace `ns` to `addr`:`port` is accepted.
    pub fn tcp_reaches(ns: &str, addr: &str, port: u16) -> Result<bool> {
        let status = LanPair::command(ns, "bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running bash in a test namespace")?;
        Ok(status.success())
    }

    /// Makes the client drop, at its input hook, about `percent` % of the UDP datagrams coming
    /// from each of `ports` (the host's video and audio ports); 0 removes the loss. Dropping at
    /// input is silent for the sender (an output-hook drop would return EPERM to it).
    pub fn set_loss(&self, ports: &[u16], percent: u32) -> Result<()> {
        ensure!(percent <= 100, "loss of {percent} %");
        let mut script = format!(
            "table inet {LOSS_TABLE} {{}}\ndelete table inet {LOSS_TABLE}\n\
             table inet {LOSS_TABLE} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n"
        );
        // numgen's range stops at 99: all of it needs no draw.
        let draw = match percent {
            100 => String::new(),
            _ => format!("numgen random mod 100 < {percent} "),
        };
        if percent > 0 {
            for port in ports {
                // The first rule counts what arrives, the second drops.
                script.push_str(&format!(
                    "  udp sport {port} counter\n  udp sport {port} {draw}counter drop\n"
                ));
            }
        }
        script.push_str(" }\n}\n");
        let file = ScratchDir::new("nft")?;
        let path = file.path().join("loss.nft");
        std::fs::write(&path, script).context("writing the nftables script")?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "nft",
                "-f",
                &path.display().to_string(),
            ],
        )?;
        Ok(())
    }

    /// Datagrams from `port` that reached the client's input hook and how many of them the
    /// loss rule dropped, since the last [`LanPair::set_loss`] (zeros without loss).
    pub fn loss_counters(&self, port: u16) -> Result<Datagrams> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "nft",
                "list",
                "table",
                "inet",
                LOSS_TABLE,
            ],
        )?;
        Ok(counted_in_listing(
            &String::from_utf8_lossy(&out.stdout),
            port,
        ))
    }

    fn delete(&self) -> Result<()> {
        let host = run("ip", &["netns", "del", &self.host]);
        let client = run("ip", &["netns", "del", &self.client]);
        host.and(client).map(|_| ())
    }
}

impl Drop for LanPair {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("removing the test namespaces: {e:#}");
        }
    }
}

/// What the loss rules of one port counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Datagrams {
    pub arrived: u64,
    pub dropped: u64,
}

impl Datagrams {
    pub fn percent_dropped(&self) -> f64 {
        if self.arrived == 0 {
            return 0.0;
        }
        100.0 * self.dropped as f64 / self.arrived as f64
    }
}

/// The packet counts of the `udp sport PORT counter packets N …` rule (arrived) and of the
/// one ending in `drop` in an `nft list` listing.
fn counted_in_listing(listing: &str, port: u16) -> Datagrams {
    let needle = format!("udp sport {port} ");
    let mut counted = Datagrams::default();
    for line in listing.lines().filter(|l| l.contains(&needle)) {
        let mut words = line.split_whitespace();
        let Some(packets) = words
            .find(|w| *w == "packets")
            .and_then(|_| words.next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if line.trim_end().ends_with("drop") {
            counted.dropped += packets;
        } else {
            counted.arrived += packets;
        }
    }
    counted
}

impl Broker {
    /// Starts `lumen-broker serve --bind HOST_ADDR` inside the host namespace of `lan` and
    /// waits until every worker reports running. The CLI ([`Broker::cli`], [`Broker::status`])
    /// still works from outside: it talks to the broker over its state dir's Unix socket.
    pub fn start_in_netns(tag: &str, lan: &LanPair) -> Result<Broker> {
        Broker::start_in_netns_with_config(tag, lan, "")
    }

    /// [`Broker::start_in_netns`] with `config` as its `config.toml`.
    pub fn start_in_netns_with_config(tag: &str, lan: &LanPair, config: &str) -> Result<Broker> {
        Broker::start_in_netns_bound(tag, lan, HOST_ADDR, config)
    }

    /// [`Broker::start_in_netns_with_config`] bound to `bind` (`0.0.0.0`: every address the host
    /// namespace has, now or later).
    pub fn start_in_netns_bound(
        tag: &str,
        lan: &LanPair,
        bind: &str,
        config: &str,
    ) -> Result<Broker> {
        let state_dir = ScratchDir::new(tag)?;
        std::fs::write(state_dir.path().join("config.toml"), config)
            .context("writing config.toml")?;
        let port_base = unique_port_base();
        let child = LanPair::command(&lan.host, bin("lumen-broker")?)
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(["serve", "--bind", bind, "--port-base"])
            .arg(port_base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lumen-broker serve in the host namespace")?;
        let child = crate::forward_output(child, "lumen-broker");
        let broker = Broker {
            child: Some(child),
            state_dir,
            port_base,
        };
        broker.wait_until(Duration::from_secs(30), "all workers running", |status| {
            all_workers_running(status)
        })?;
        Ok(broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loss_counters_from_an_nft_listing() {
        let listing = "table inet lumen_loss {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\
             \t\tudp sport 20014 counter packets 500 bytes 700000\n\
             \t\tudp sport 20014 numgen random mod 100 < 3 counter packets 17 bytes 17000 drop\n\
             \t\tudp sport 20016 counter packets 90 bytes 9000\n\
             \t\tudp sport 20016 numgen random mod 100 < 3 counter packets 2 bytes 300 drop\n\t}\n}\n";
        let video = counted_in_listing(listing, 20014);
        assert_eq!((video.arrived, video.dropped), (500, 17));
        assert!((video.percent_dropped() - 3.4).abs() < 1e-9);
        assert_eq!(
            counted_in_listing(listing, 20016),
            Datagrams {
                arrived: 90,
                dropped: 2
            }
        );
        assert_eq!(counted_in_listing(listing, 20015), Datagrams::default());
    }
}
