"""Sends input with the real Moonlight client (moonlight-python 0.3.0 and the
libmoonlight-common-c it bundles) while it streams from a lumen host, for
tests/tests/input_moonlight.rs. The identity must already be paired.

  input HOST HTTP_PORT IDENTITY_DIR WIDTH HEIGHT FPS

launches "Desktop" in H.264 and keeps decoding frames on the main thread. Once frames flow, a
second thread calls the library's own LiSend* functions (the ones a Moonlight client calls) in
the order SEQUENCE lists, then presses Ctrl and the right button and leaves them held. The main
thread then quits the app (/cancel) while they are held, so the host must release them, waits
for the host to end the stream, and stops.

Calls are spaced by GAP seconds. moonlight-common-c merges what is still queued when the next
call comes (relative moves add up, an absolute position or pen move replaces the previous one,
a gamepad state with the same buttons updates the queued one: InputStream.c); the gap lets each
call leave as a packet of its own, so the host sees each one.

The last stdout line is a JSON summary: frames decoded before and during the input, each call's
return code (0 is success), and "error" on failure (never a bare traceback).
"""

import ctypes
import json
import sys
import threading
import time

import moonlight_python
import moonlight_python.stream
from moonlight_python import MoonlightClient

# Frames decoded before the input starts: the stream is up and the client no longer nudges the
# mouse (moonlight-python moves it by +10 and, 0.5 s later, -10 until the first frame).
FRAMES_BEFORE_INPUT = 15
SETTLE_S = 1.0
GAP = 0.04

# Limelight.h
KEY_ACTION_DOWN, KEY_ACTION_UP = 0x03, 0x04
MODIFIER_SHIFT, MODIFIER_CTRL = 0x01, 0x02
BUTTON_ACTION_PRESS, BUTTON_ACTION_RELEASE = 0x07, 0x08
BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT, BUTTON_X1, BUTTON_X2 = 1, 2, 3, 4, 5
LI_TOUCH_EVENT_HOVER, LI_TOUCH_EVENT_DOWN, LI_TOUCH_EVENT_UP, LI_TOUCH_EVENT_MOVE = 0, 1, 2, 3
LI_TOOL_TYPE_PEN = 0x01
LI_ROT_UNKNOWN, LI_TILT_UNKNOWN = 0xFFFF, 0xFF
LI_CTYPE_XBOX = 0x01
LI_CCAP_ANALOG_TRIGGERS, LI_CCAP_RUMBLE = 0x01, 0x02
A_FLAG, B_FLAG, X_FLAG, Y_FLAG = 0x1000, 0x2000, 0x4000, 0x8000

# Windows virtual keys.
VK_LSHIFT, VK_LCONTROL, VK_A, VK_C = 0xA0, 0xA2, 0x41, 0x43
VK_NUMPAD5, VK_MEDIA_PLAY_PAUSE = 0x65, 0xB3
VK_F13, VK_F14 = 0x7C, 0x7D


def library():
    """libmoonlight-common-c as ctypes sees it. moonlight-python dlopens the same file (cffi,
    the .so inside its package); the dynamic loader hands out the already loaded library for
    the same path, so these calls reach the connection it started."""
    lib = ctypes.CDLL(moonlight_python.stream._find_shared_lib())
    c = ctypes
    signatures = {
        # int LiSendKeyboardEvent(short keyCode, char keyAction, char modifiers);
        "LiSendKeyboardEvent": [c.c_short, c.c_char, c.c_char],
        # int LiSendMouseMoveEvent(short deltaX, short deltaY);
        "LiSendMouseMoveEvent": [c.c_short, c.c_short],
        # int LiSendMousePositionEvent(short x, short y, short referenceWidth, short referenceHeight);
        "LiSendMousePositionEvent": [c.c_short, c.c_short, c.c_short, c.c_short],
        # int LiSendMouseButtonEvent(char action, int button);
        "LiSendMouseButtonEvent": [c.c_char, c.c_int],
        # int LiSendHighResScrollEvent(short scrollAmount);
        "LiSendHighResScrollEvent": [c.c_short],
        # int LiSendHighResHScrollEvent(short scrollAmount);
        "LiSendHighResHScrollEvent": [c.c_short],
        # int LiSendUtf8TextEvent(const char *text, unsigned int length);
        "LiSendUtf8TextEvent": [c.c_char_p, c.c_uint],
        # int LiSendTouchEvent(uint8_t eventType, uint32_t pointerId, float x, float y,
        #     float pressureOrDistance, float contactAreaMajor, float contactAreaMinor,
        #     uint16_t rotation);
        "LiSendTouchEvent": [c.c_uint8, c.c_uint32, c.c_float, c.c_float, c.c_float,
                             c.c_float, c.c_float, c.c_uint16],
        # int LiSendPenEvent(uint8_t eventType, uint8_t toolType, uint8_t penButtons,
        #     float x, float y, float pressureOrDistance, float contactAreaMajor,
        #     float contactAreaMinor, uint16_t rotation, uint8_t tilt);
        "LiSendPenEvent": [c.c_uint8, c.c_uint8, c.c_uint8, c.c_float, c.c_float, c.c_float,
                           c.c_float, c.c_float, c.c_uint16, c.c_uint8],
        # int LiSendControllerArrivalEvent(uint8_t controllerNumber, uint16_t activeGamepadMask,
        #     uint8_t type, uint32_t supportedButtonFlags, uint16_t capabilities);
        "LiSendControllerArrivalEvent": [c.c_uint8, c.c_uint16, c.c_uint8, c.c_uint32,
                                         c.c_uint16],
        # int LiSendMultiControllerEvent(short controllerNumber, short activeGamepadMask,
        #     int buttonFlags, unsigned char leftTrigger, unsigned char rightTrigger,
        #     short leftStickX, short leftStickY, short rightStickX, short rightStickY);
        "LiSendMultiControllerEvent": [c.c_short, c.c_short, c.c_int, c.c_ubyte, c.c_ubyte,
                                       c.c_short, c.c_short, c.c_short, c.c_short],
        # int LiSendControllerEvent(int buttonFlags, unsigned char leftTrigger,
        #     unsigned char rightTrigger, short leftStickX, short leftStickY,
        #     short rightStickX, short rightStickY);
        "LiSendControllerEvent": [c.c_int, c.c_ubyte, c.c_ubyte, c.c_short, c.c_short,
                                  c.c_short, c.c_short],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c.c_int
    return lib


def byte(v):
    return bytes([v])


def key(lib, vk, down, modifiers=0):
    return ("key", lib.LiSendKeyboardEvent(vk, byte(KEY_ACTION_DOWN if down else KEY_ACTION_UP),
                                           byte(modifiers)))


def tap(lib, vk, modifiers=0):
    return [key(lib, vk, True, modifiers), key(lib, vk, False, modifiers)]


def button(lib, b, down):
    action = BUTTON_ACTION_PRESS if down else BUTTON_ACTION_RELEASE
    return ("button", lib.LiSendMouseButtonEvent(byte(action), b))


def text(lib, s):
    data = s.encode("utf-8")
    return ("text", lib.LiSendUtf8TextEvent(data, len(data)))


def touch(lib, kind, x, y):
    return ("touch", lib.LiSendTouchEvent(kind, 7, x, y, 0.5, 0.0, 0.0, LI_ROT_UNKNOWN))


def pen(lib, kind, x, y, buttons=0):
    return ("pen", lib.LiSendPenEvent(kind, LI_TOOL_TYPE_PEN, buttons, x, y, 0.5, 0.0, 0.0,
                                      LI_ROT_UNKNOWN, LI_TILT_UNKNOWN))


def sequence(lib, width, height):
    """What the test expects, call by call (tests/tests/input_moonlight.rs mirrors it)."""
    steps = [
        lambda: tap(lib, VK_F13),                                  # start marker
        lambda: key(lib, VK_LSHIFT, True, MODIFIER_SHIFT),         # Shift+A
        lambda: tap(lib, VK_A, MODIFIER_SHIFT),
        lambda: key(lib, VK_LSHIFT, False),
        lambda: key(lib, VK_LCONTROL, True, MODIFIER_CTRL),        # Ctrl+C
        lambda: tap(lib, VK_C, MODIFIER_CTRL),
        lambda: key(lib, VK_LCONTROL, False),
        lambda: tap(lib, VK_NUMPAD5),                              # a keypad key
        lambda: tap(lib, VK_MEDIA_PLAY_PAUSE),                     # a media key
        lambda: ("move", lib.LiSendMouseMoveEvent(-5, 7)),
        lambda: ("move", lib.LiSendMouseMoveEvent(300, -2)),
        lambda: ("position", lib.LiSendMousePositionEvent(width // 4, height // 2, width,
                                                          height)),
        lambda: ("position", lib.LiSendMousePositionEvent(width // 2, height // 4, width,
                                                          height)),
        # The bottom-right pixel: the far edge of the reference plane.
        lambda: ("position", lib.LiSendMousePositionEvent(width - 1, height - 1, width,
                                                          height)),
        lambda: [button(lib, BUTTON_LEFT, True), button(lib, BUTTON_LEFT, False)],
        lambda: [button(lib, BUTTON_MIDDLE, True), button(lib, BUTTON_MIDDLE, False)],
        lambda: [button(lib, BUTTON_RIGHT, True), button(lib, BUTTON_RIGHT, False)],
        lambda: [button(lib, BUTTON_X1, True), button(lib, BUTTON_X1, False)],
        lambda: [button(lib, BUTTON_X2, True), button(lib, BUTTON_X2, False)],
        lambda: ("scroll", lib.LiSendHighResScrollEvent(120)),
        lambda: ("scroll", lib.LiSendHighResScrollEvent(-30)),
        lambda: ("hscroll", lib.LiSendHighResHScrollEvent(60)),
        lambda: ("hscroll", lib.LiSendHighResHScrollEvent(-240)),
        lambda: text(lib, "Hi"),
        lambda: text(lib, "é€"),
        lambda: touch(lib, LI_TOUCH_EVENT_DOWN, 0.25, 0.5),
        lambda: touch(lib, LI_TOUCH_EVENT_MOVE, 0.5, 0.75),
        lambda: touch(lib, LI_TOUCH_EVENT_UP, 0.5, 0.75),
        lambda: pen(lib, LI_TOUCH_EVENT_HOVER, 0.75, 0.25),
        lambda: pen(lib, LI_TOUCH_EVENT_DOWN, 0.5, 0.5),
        lambda: pen(lib, LI_TOUCH_EVENT_UP, 0.5, 0.5),
        # A gamepad: arrival (the arrival packet and an empty state, InputStream.c), A pressed,
        # released. There is no /dev/uinput here: each is counted as dropped, nothing injected.
        lambda: ("pad_arrival", lib.LiSendControllerArrivalEvent(
            0, 0x1, LI_CTYPE_XBOX, A_FLAG | B_FLAG | X_FLAG | Y_FLAG,
            LI_CCAP_ANALOG_TRIGGERS | LI_CCAP_RUMBLE)),
        lambda: ("pad_state", lib.LiSendMultiControllerEvent(0, 0x1, A_FLAG, 0, 255, 1000,
                                                             -1000, 0, 0)),
        lambda: ("pad_state", lib.LiSendMultiControllerEvent(0, 0x1, 0, 0, 0, 0, 0, 0, 0)),
        lambda: tap(lib, VK_F14),                                  # end marker
        # Held when the app is quit: the host must let go of them.
        lambda: key(lib, VK_LCONTROL, True, MODIFIER_CTRL),
        lambda: button(lib, BUTTON_RIGHT, True),
    ]
    results = []
    for step in steps:
        got = step()
        for name, rc in (got if isinstance(got, list) else [got]):
            results.append([name, rc])
        time.sleep(GAP)
    return results


def run(host, port, identity_dir, width, height, fps):
    client = MoonlightClient(config_dir=identity_dir)
    client.connect(host, port)
    result = {"frames_before": 0, "frames_during": 0}
    started = time.monotonic()
    try:
        client.start_stream(app="Desktop", width=width, height=height, fps=fps, codec="h264",
                            bitrate_kbps=1000, black_frame_threshold=-1, ready_timeout=20.0)
        lib = library()
        sent = threading.Event()
        calls = {}

        def send_input():
            try:
                time.sleep(SETTLE_S)
                calls["results"] = sequence(lib, width, height)
            except Exception as e:  # noqa: BLE001 - reported in the summary
                calls["error"] = f"{type(e).__name__}: {e}"
            finally:
                sent.set()

        sender = None
        for _frame in client.frames():
            if sender is None:
                result["frames_before"] += 1
                if result["frames_before"] >= FRAMES_BEFORE_INPUT:
                    sender = threading.Thread(target=send_input, name="input", daemon=True)
                    sender.start()
            else:
                result["frames_during"] += 1
                if sent.is_set():
                    break
        if sender is None or not sent.is_set():
            raise RuntimeError("the stream ended before the input was sent")
        if "error" in calls:
            raise RuntimeError(calls["error"])
        result["calls"] = calls["results"]
        # Let the held key and button reach the host before quitting.
        time.sleep(0.5)
        session = client._session
        client.quit_app()
        deadline = time.monotonic() + 10.0
        while not session.is_terminated and time.monotonic() < deadline:
            time.sleep(0.05)
        result["terminated"] = session.is_terminated
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = type(e).__name__
        result["message"] = str(e)
    finally:
        try:
            client.stop_stream()
        except Exception as e:  # noqa: BLE001
            result.setdefault("stop_error", str(e))
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)


def main(argv):
    if len(argv) == 7 and argv[0] == "input":
        run(argv[1], int(argv[2]), argv[3], int(argv[4]), int(argv[5]), int(argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
