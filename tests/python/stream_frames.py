"""Streams from a lumen host with the real Moonlight client (moonlight-python 0.3.0) for
tests/tests/gamestream_stream.rs. The identity must already be paired.

  stream HOST HTTP_PORT IDENTITY_DIR CODEC WIDTH HEIGHT FPS FRAMES OUT END

launches "Desktop" (or resumes it, when the host reports it running), decodes FRAMES frames and
appends each to OUT as a record: a header of u32le width, u32le height, u32le client frame
number, u32le frame type, then the frame's luma plane (width*height bytes, BT.601 limited range,
computed from the decoded BGR picture). Then, by END:

  stop   stops the stream (the client leaves; the app stays running on the host)
  quit   quits the app (/cancel) while still streaming, waits for the host to end the stream
         (the client's termination callback), then stops

The last stdout line is a JSON summary; failures are reported there ("error"), never as a bare
traceback.
"""

import json
import struct
import sys
import time

import numpy as np

from moonlight_python import MoonlightClient


def emit(result):
    print(json.dumps(result), flush=True)


def luma(bgr):
    b = bgr[:, :, 0].astype(np.float32)
    g = bgr[:, :, 1].astype(np.float32)
    r = bgr[:, :, 2].astype(np.float32)
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def current_game(client):
    http = client._get_http()
    return http.parse_server_info(http.get_server_info(use_https=True)).current_game


def stream(host, port, identity_dir, codec, width, height, fps, count, out_path, end):
    client = MoonlightClient(config_dir=identity_dir)
    client.connect(host, port)
    result = {"frames": 0, "current_game_before": current_game(client)}
    started = time.monotonic()
    try:
        client.start_stream(app="Desktop", width=width, height=height, fps=fps, codec=codec,
                            bitrate_kbps=1500, black_frame_threshold=-1, record_audio=False,
                            ready_timeout=20.0)
        result["ready_s"] = round(time.monotonic() - started, 3)
        with open(out_path, "wb") as out:
            for frame in client.frames():
                y = luma(frame.data)
                h, w = y.shape
                out.write(struct.pack("<IIII", w, h, frame.frame_number & 0xFFFFFFFF,
                                      frame.frame_type & 0xFFFFFFFF))
                out.write(np.ascontiguousarray(y).tobytes())
                result["frames"] += 1
                if result["frames"] >= count:
                    break
        if end == "quit":
            session = client._session
            client.quit_app()
            result["quit"] = True
            deadline = time.monotonic() + 10.0
            while not session.is_terminated and time.monotonic() < deadline:
                time.sleep(0.05)
            result["terminated"] = session.is_terminated
            result["termination_error"] = session.termination_error
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = type(e).__name__
        result["message"] = str(e)
    finally:
        try:
            client.stop_stream()
        except Exception as e:  # noqa: BLE001
            result.setdefault("stop_error", str(e))
    result["current_game_after"] = current_game(client)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    emit(result)


def main(argv):
    if len(argv) == 11 and argv[0] == "stream" and argv[10] in ("stop", "quit"):
        stream(argv[1], int(argv[2]), argv[3], argv[4], int(argv[5]), int(argv[6]),
               int(argv[7]), int(argv[8]), argv[9], argv[10])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
