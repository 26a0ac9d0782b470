"""The legitimate client of tests/tests/reliability_flood.rs: streams from a lumen host with the
real Moonlight client (moonlight-python 0.3.0) while other processes flood the host, records every
decoded frame as stream_timed.py does (same file format, one stream), and meanwhile sends input
the host must refuse, through the client library's own LiSend* functions. The identity must
already be paired.

  flood HOST HTTP_PORT IDENTITY_DIR CODEC WIDTH HEIGHT FPS SECONDS OUT AREA_W AREA_H INPUT_SECONDS

Once the first frame came, a second thread sends one round of out-of-range input every ROUND_GAP
seconds for INPUT_SECONDS: a mouse position outside its reference plane, a key with modifier bits
no keyboard has, a control character as text, a touch at x = 5.0, a gamepad state for controller
20. The library may refuse some itself (its return code is recorded per call: 0 is sent); what it
sends, the host must count as invalid and drop.

The last stdout line is a JSON summary: frames decoded, the stream's end, and per input call the
return codes seen; "error" on failure (never a bare traceback).
"""

import ctypes
import json
import struct
import sys
import threading
import time

import moonlight_python
import moonlight_python.stream
from moonlight_python import MoonlightClient

import stream_timed

ROUND_GAP = 0.05

# Limelight.h
KEY_ACTION_DOWN = 0x03
LI_TOUCH_EVENT_DOWN = 0x01
VK_A = 0x41


def library():
    """libmoonlight-common-c as ctypes sees it: the same file moonlight-python loaded, so the
    calls reach the connection it started."""
    lib = ctypes.CDLL(moonlight_python.stream._find_shared_lib())
    c = ctypes
    signatures = {
        "LiSendMousePositionEvent": [c.c_short, c.c_short, c.c_short, c.c_short],
        "LiSendKeyboardEvent": [c.c_short, c.c_char, c.c_char],
        "LiSendUtf8TextEvent": [c.c_char_p, c.c_uint],
        "LiSendTouchEvent": [c.c_uint8, c.c_uint32, c.c_float, c.c_float, c.c_float,
                             c.c_float, c.c_float, c.c_uint16],
        # int LiSendMultiControllerEvent(short controllerNumber, short activeGamepadMask,
        #     int buttonFlags, unsigned char leftTrigger, unsigned char rightTrigger,
        #     short leftStickX, short leftStickY, short rightStickX, short rightStickY);
        "LiSendMultiControllerEvent": [c.c_short, c.c_short, c.c_int, c.c_ubyte, c.c_ubyte,
                                       c.c_short, c.c_short, c.c_short, c.c_short],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c.c_int
    return lib


def bad_input_round(lib):
    """One round of input out of range; returns (name, return code) per call."""
    return [
        ("mouse_position_outside_plane", lib.LiSendMousePositionEvent(5000, -3, 640, 360)),
        ("key_with_unknown_modifiers", lib.LiSendKeyboardEvent(VK_A, bytes([KEY_ACTION_DOWN]),
                                                               bytes([0x70]))),
        ("text_control_character", lib.LiSendUtf8TextEvent(b"\x07", 1)),
        ("touch_at_x_5", lib.LiSendTouchEvent(LI_TOUCH_EVENT_DOWN, 1, 5.0, 0.5, 0.5, 0.0, 0.0,
                                              0xFFFF)),
        ("controller_20", lib.LiSendMultiControllerEvent(20, 0x1, 0x1000, 0, 0, 0, 0, 0, 0)),
    ]


def send_bad_input(lib, seconds, stop, result):
    calls = result["input_calls"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        for name, rc in bad_input_round(lib):
            codes = calls.setdefault(name, {})
            codes[str(rc)] = codes.get(str(rc), 0) + 1
        time.sleep(ROUND_GAP)


def flood(host, port, identity_dir, codec, width, height, fps, seconds, out_path, area,
          input_seconds):
    client = MoonlightClient(config_dir=identity_dir)
    client.connect(host, port)
    result = {"frames": [0, 0], "input_calls": {}}
    started = time.monotonic()
    stop = threading.Event()
    sender = None
    try:
        lib = library()
        with open(out_path, "wb") as out:
            out.write(struct.pack("<IIII", width, height, area[0], area[1]))
            stream_timed.start(client, codec, width, height, fps)
            result["ready_s"] = round(time.monotonic() - started, 3)
            out.flush()
            sender = threading.Thread(target=send_bad_input,
                                      args=(lib, input_seconds, stop, result), daemon=True)
            sender.start()
            how = stream_timed.record_frames(client, out, 0, area, started + seconds, result)
            result["ended"] = how
            if how != "deadline":
                result["termination_error"] = client._session.termination_error
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = type(e).__name__
        result["message"] = str(e)
    finally:
        stop.set()
        if sender is not None:
            sender.join(timeout=5)
        try:
            client.stop_stream()
        except Exception as e:  # noqa: BLE001
            result.setdefault("stop_error", str(e))
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    stream_timed.emit(result)


def main(argv):
    if len(argv) == 13 and argv[0] == "flood":
        flood(argv[1], int(argv[2]), argv[3], argv[4], int(argv[5]), int(argv[6]), int(argv[7]),
              float(argv[8]), argv[9], (int(argv[10]), int(argv[11])), float(argv[12]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
