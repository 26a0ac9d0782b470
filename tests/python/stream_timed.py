"""Streams from a lumen host with the real Moonlight client (moonlight-python 0.3.0) for a while
and records WHEN each decoded frame arrived, for tests/tests/reliability_restarts.rs. The identity
must already be paired.

  stream HOST HTTP_PORT IDENTITY_DIR CODEC WIDTH HEIGHT FPS SECONDS OUT AREA_W AREA_H RECONNECT

launches "Desktop" (or resumes it, when the host reports it running) and decodes frames for
SECONDS seconds. AREA_W x AREA_H is the test pattern's code area at the top-left
(lumen_core::pattern::code_area, computed by the caller). OUT starts with a header of u32le
width, height, AREA_W, AREA_H, then one record per decoded frame:

  u64le arrival  time.monotonic_ns() when the frame came out of the decoder (the host's
                 CLOCK_MONOTONIC: same machine, same clock)
  u32le stream   0 for the first stream, 1 for the stream after a reconnect
  u32le number   the client's frame number
  u32le type     the client's frame type (1: IDR)
  area_w*area_h  luma of the top-left code area only (BT.601 limited range), which holds the
                 test pattern's frame code (frame number and capture time): the rest of the
                 picture is not needed and would make the file large

When the stream ends early (the host went away), the script notes how: the client library's
termination callback (with its error code), or no frame for END_TIMEOUT seconds. With
RECONNECT = "reconnect" it then starts a new stream (once) with the same identity and records
when that stream's first frame came; with "once" it stops there.

Input on command: each line on stdin is a command, run at once through the client library's
own LiSend* functions (tests/python/input_client.py loads them through ctypes), for the restart
test's held-input checks:

  hold     F15 down, then the right mouse button down (and both left held)
  release  F15 up, then the right mouse button up
  tap      F16 down and up

The summary counts the calls ("input_calls") and lists those that did not return 0
("input_failures"). Stdin at EOF (or /dev/null) ends the commands, not the stream.

The last stdout line is a JSON summary; failures are reported there ("error"), never as a bare
traceback.
"""

import json
import struct
import sys
import threading
import time

import numpy as np

import moonlight_python
from moonlight_python import MoonlightClient
from moonlight_python.decoder import Decoder

import input_client
from input_client import BUTTON_RIGHT, VK_F13, button, key


class LowDelayDecoder(Decoder):
    """moonlight-python's decoder without frame threading. Its default (PyAV thread_type AUTO)
    holds each picture back by one frame per extra decoding thread, which would add that much to
    every measured arrival and pair each packet's frame type with an older picture. Moonlight's
    own clients decode with low delay; slice threading adds none."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._codec_ctx.thread_type = "SLICE"


# MoonlightClient builds its decoder by this name when a stream starts.
moonlight_python.Decoder = LowDelayDecoder

# How long without a frame (and without the termination callback) counts as the end of a stream.
END_TIMEOUT_S = 20.0
# The client library's own wait for the first picture of a stream.
READY_TIMEOUT_S = 20.0
# How long the stream after a reconnect is recorded.
AFTER_RECONNECT_S = 3.0


# The keys of the input commands (Windows virtual keys: F15, F16 follow F13).
VK_HELD = VK_F13 + 2
VK_TAP = VK_F13 + 3


def input_command(lib, command):
    """The LiSend* calls of one command, as (name, return code) pairs."""
    if command == "hold":
        return [key(lib, VK_HELD, True), button(lib, BUTTON_RIGHT, True)]
    if command == "release":
        return [key(lib, VK_HELD, False), button(lib, BUTTON_RIGHT, False)]
    if command == "tap":
        return [key(lib, VK_TAP, True), key(lib, VK_TAP, False)]
    raise ValueError(f"unknown input command {command!r}")


def serve_input_commands(result):
    """Runs the commands read from stdin until EOF (on its own thread: frames keep flowing)."""
    result["input_calls"] = 0
    result["input_failures"] = []
    try:
        lib = None
        for line in sys.stdin:
            command = line.strip()
            if not command:
                continue
            if lib is None:
                lib = input_client.library()
            for name, rc in input_command(lib, command):
                result["input_calls"] += 1
                if rc != 0:
                    result["input_failures"].append([command, name, rc])
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        result["input_error"] = f"{type(e).__name__}: {e}"


def emit(result):
    print(json.dumps(result), flush=True)


def luma(bgr):
    b = bgr[:, :, 0].astype(np.float32)
    g = bgr[:, :, 1].astype(np.float32)
    r = bgr[:, :, 2].astype(np.float32)
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def start(client, codec, width, height, fps):
    client.start_stream(app="Desktop", width=width, height=height, fps=fps, codec=codec,
                        bitrate_kbps=1500, black_frame_threshold=-1, record_audio=False,
                        ready_timeout=READY_TIMEOUT_S)


def record_frames(client, out, index, area, deadline, result):
    """Writes each frame of the running stream until `deadline`; returns how the stream ended:
    "deadline", "terminated" or "no-frames"."""
    area_w, area_h = area
    manager = client._stream_manager
    session = client._session
    sub = manager.subscribe()
    last_frame = time.monotonic()
    try:
        while time.monotonic() < deadline:
            frame = sub.get(timeout=0.1)
            if frame is None:
                if session.is_terminated:
                    return "terminated"
                if time.monotonic() - last_frame > END_TIMEOUT_S:
                    return "no-frames"
                continue
            arrival = time.monotonic_ns()
            last_frame = time.monotonic()
            code = luma(frame.data[:area_h, :area_w, :])
            h, w = code.shape
            if (w, h) != (area_w, area_h):
                raise ValueError(f"a {frame.data.shape} frame has no {area_w}x{area_h} code area")
            out.write(struct.pack("<QIII", arrival, index, frame.frame_number & 0xFFFFFFFF,
                                  frame.frame_type & 0xFFFFFFFF))
            out.write(np.ascontiguousarray(code).tobytes())
            result["frames"][index] += 1
        return "deadline"
    finally:
        manager.unsubscribe(sub)


def stream(host, port, identity_dir, codec, width, height, fps, seconds, out_path, area,
           reconnect):
    client = MoonlightClient(config_dir=identity_dir)
    client.connect(host, port)
    result = {"frames": [0, 0], "ended": [], "reconnected": False}
    threading.Thread(target=serve_input_commands, args=(result,), name="input",
                     daemon=True).start()
    started = time.monotonic()
    deadline = started + seconds
    try:
        with open(out_path, "wb") as out:
            out.write(struct.pack("<IIII", width, height, area[0], area[1]))
            start(client, codec, width, height, fps)
            result["ready_s"] = round(time.monotonic() - started, 3)
            out.flush()
            for index in (0, 1):
                how = record_frames(client, out, index, area, deadline, result)
                session = client._session
                ended = {"stream": index, "how": how, "at_ns": time.monotonic_ns()}
                if how != "deadline":
                    ended["termination_error"] = session.termination_error
                result["ended"].append(ended)
                client.stop_stream()
                if how == "deadline" or reconnect != "reconnect" or index == 1:
                    break
                # The same identity starts again, as a user would after the error dialog.
                result["current_game_at_reconnect"] = current_game(client)
                result["reconnect_start_ns"] = time.monotonic_ns()
                start(client, codec, width, height, fps)
                result["reconnect_ready_ns"] = time.monotonic_ns()
                result["reconnected"] = True
                deadline = min(deadline, time.monotonic() + AFTER_RECONNECT_S)
                out.flush()
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = type(e).__name__
        result["message"] = str(e)
    finally:
        try:
            client.stop_stream()
        except Exception as e:  # noqa: BLE001
            result.setdefault("stop_error", str(e))
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    emit(result)


def current_game(client):
    http = client._get_http()
    return http.parse_server_info(http.get_server_info(use_https=True)).current_game


def main(argv):
    if len(argv) == 13 and argv[0] == "stream" and argv[12] in ("once", "reconnect"):
        stream(argv[1], int(argv[2]), argv[3], argv[4], int(argv[5]), int(argv[6]),
               int(argv[7]), float(argv[8]), argv[9], (int(argv[10]), int(argv[11])), argv[12])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
