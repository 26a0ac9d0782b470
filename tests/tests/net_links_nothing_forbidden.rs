//! `lumen-net` faces the LAN, so it must not link FFmpeg, CUDA, EGL, PipeWire or D-Bus code: none of it may
//! be reachable from a hostile packet. Checked twice: in the crate graph (`cargo tree`) and in the built
//! binary's dynamic libraries.

use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Crates whose presence in lumen-net's graph would put media, GPU or desktop code next to the LAN.
const FORBIDDEN_CRATES: &[&str] = &[
    "ffmpeg",
    "cudarc",
    "cuda",
    "khronos-egl",
    "egl",
    "pipewire",
    "libspa",
    "zbus",
    "dbus",
    "ashpd",
    "opus",
    "audiopus",
    "reis",
    "gstreamer",
];

/// Shared libraries that must never be loaded by lumen-net.
const FORBIDDEN_LIBRARIES: &[&str] = &[
    "libavcodec",
    "libavformat",
    "libavutil",
    "libswscale",
    "libcuda",
    "libEGL",
    "libGL",
    "libpipewire",
    "libdbus",
    "libopus",
    "libsystemd",
];

#[test]
fn lumen_net_crate_graph_has_no_media_gpu_or_dbus_crates() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "lumen-net",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).context("cargo tree output is not UTF-8")?;
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        crates.contains(&"lumen-net"),
        "cargo tree did not list lumen-net: {tree}"
    );
    for name in &crates {
        let lower = name.to_ascii_lowercase();
        for forbidden in FORBIDDEN_CRATES {
            ensure!(
                !(lower == *forbidden
                    || lower.starts_with(&format!("{forbidden}-"))
                    || lower.starts_with(&format!("{forbidden}_"))),
                "lumen-net depends on {name}, which is forbidden next to the LAN"
            );
        }
    }
    Ok(())
}

#[test]
fn lumen_net_binary_loads_no_media_gpu_or_dbus_libraries() -> Result<()> {
    let net = lumen_tests::bin("lumen-net")?;
    let out = Command::new("ldd")
        .arg(&net)
        .output()
        .context("running ldd")?;
    let libs = String::from_utf8_lossy(&out.stdout);
    ensure!(libs.contains("libc.so"), "ldd output looks wrong: {libs}");
    for forbidden in FORBIDDEN_LIBRARIES {
        ensure!(
            !libs.contains(forbidden),
            "lumen-net links {forbidden}: {libs}"
        );
    }
    Ok(())
}
