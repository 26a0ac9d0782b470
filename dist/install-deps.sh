#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages lumen builds, runs and tests with. Run as root (or through sudo).
# The same list serves the host and the test suite, so "it works on my machine" cannot drift from CI.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi

packages=(
    # build
    pkg-config libssl-dev clang libclang-dev cmake nasm
    # media (capture and encode workers): FFmpeg, Opus, PipeWire
    libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
    libavfilter-dev libavdevice-dev libopus-dev ffmpeg libpipewire-0.3-dev libspa-0.2-dev
    # tests: a real PipeWire graph, network namespaces with packet loss, the Python client
    pipewire pipewire-bin wireplumber dbus gstreamer1.0-pipewire gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good gstreamer1.0-tools python3-venv iproute2 nftables
    # tests: the real ScreenCast portal frontend (with a test backend) in front of PipeWire
    xdg-desktop-portal
    # systemd-analyze, to check the hardened user unit
    systemd
)

export DEBIAN_FRONTEND=noninteractive
# A mirror hiccup should not fail a fresh machine's setup: retry a few times.
for attempt in 1 2 3; do
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; then
        exit 0
    fi
    echo "install-deps: attempt $attempt failed; retrying" >&2
    sleep $((attempt * 5))
done
echo "install-deps: could not install the packages lumen needs" >&2
exit 1
