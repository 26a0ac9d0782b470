"""Streams from a lumen host with the real Moonlight client (moonlight-python 0.3.0) for
tests/tests/gamestream_stream.rs. The identity must already be paired.

  stream HOST HTTP_PORT IDENTITY_DIR CODEC WIDTH HEIGHT FPS FRAMES OUT AREA_W AREA_H END

launches "Desktop" (or resumes it, when the host reports it running), decodes FRAMES frames and
appends each to OUT as a record: a header of u32le width, u32le height, u32le client frame
number, u32le frame type, then the luma of the AREA_W x AREA_H code area at the picture's
top-left (BT.601 limited range, computed from the decoded BGR picture). The code area holds the
test pattern's frame code (lumen_core::pattern::code_area, computed by the caller); the rest of
the picture is not needed and would make the file six times larger. Then, by END:

  stop   stops the stream (the client leaves; the app stays running on the host)
  quit   quits the app (/cancel) while still streaming, waits for the host to end the stream
         (the client's termination callback), then stops

  stream ... END AUDIO_CHANNELS

with a fourteenth argument (2, 6 or 8) the client asks for that audio layout and records the audio
while it decodes the frames; the summary gets "audio": the Opus configuration the client took from
DESCRIBE (moonlight-common-c's audio init callback), how many packets and PCM chunks it decoded,
their channel count, and for each channel in Moonlight's order its dominant frequency and RMS
level. For AV1 the client decodes with libdav1d (see decode_av1_with_dav1d).
moonlight-python's start_stream has no audio parameter: the layout goes into its StreamConfig
dataclass (`audio_configuration`, moonlight-common-c's MAKE_AUDIO_CONFIGURATION), which both the
/launch request (surroundAudioInfo) and LiStartConnection read.

The last stdout line is a JSON summary; failures are reported there ("error"), never as a bare
traceback.
"""

import functools
import json
import struct
import sys
import time

import numpy as np

import moonlight_python
import moonlight_python.decoder
from moonlight_python import MoonlightClient

# moonlight-common-c's channel masks (Limelight.h AUDIO_CONFIGURATION_*).
CHANNEL_MASKS = {2: 0x3, 6: 0x3F, 8: 0x63F}
# Seconds of audio recorded for the summary (the client drops its first 500 ms itself).
AUDIO_SECONDS = 2.0
# moonlight-python decodes Opus with PyAV, whose FFmpeg reads a mapping-family-1 OpusHead as
# Vorbis channel order and reorders the output to its own (libavcodec/vorbis_data.c,
# ff_vorbis_channel_layout_offsets: output channel i is decoded channel OFFSETS[i]). Moonlight's
# decoders (libopus directly) keep the decoded order, FL FR C LFE BL BR SL SR; the summary undoes
# FFmpeg's reordering so its channels are the ones a Moonlight client plays.
FFMPEG_VORBIS_OFFSETS = {2: [0, 1], 6: [0, 2, 1, 5, 3, 4], 8: [0, 2, 1, 7, 5, 6, 3, 4]}


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


def decode_av1_with_dav1d():
    """moonlight-python decodes AV1 with FFmpeg's native "av1" decoder, which only drives a
    hardware accelerator and answers ENOSYS without one (this machine has no GPU); its PyAV wheel
    also carries libdav1d, a software AV1 decoder, which is what a desktop client uses here."""
    import av
    if "libdav1d" in av.codecs_available:
        moonlight_python.decoder.CODEC_NAMES["av1"] = "libdav1d"


def ask_for_audio_layout(channels):
    """Makes every StreamConfig moonlight-python builds ask for `channels` audio channels."""
    config = (CHANNEL_MASKS[channels] << 16) | (channels << 8) | 0xCA
    moonlight_python.StreamConfig = functools.partial(
        moonlight_python.StreamConfig, audio_configuration=config)


def record_audio(client, seconds):
    """Decoded PCM for `seconds` (or until 10 s pass), and what the client negotiated."""
    manager = client._stream_manager
    sub = manager.subscribe_audio()
    chunks = []
    samples = 0
    deadline = time.monotonic() + 10.0
    try:
        while samples < seconds * 48000 and time.monotonic() < deadline:
            chunk = sub.get(timeout=0.5)
            if chunk is not None:
                chunks.append(chunk)
                samples += chunk.data.shape[0]
    finally:
        manager.unsubscribe_audio(sub)
    opus = client._session.opus_config
    summary = {
        "opus": {
            "channel_count": opus.channel_count,
            "streams": opus.streams,
            "coupled_streams": opus.coupled_streams,
            "mapping": list(opus.mapping),
            "samples_per_frame": opus.samples_per_frame,
        },
        "chunks": len(chunks),
        "chunk_channels": sorted({c.channels for c in chunks}),
        "pcm_channels": sorted({int(c.data.shape[1]) for c in chunks}),
        "samples": samples,
        "loss": dict(client._session.audio_loss_stats),
    }
    if chunks:
        decoded = np.concatenate([c.data for c in chunks]).astype(np.float64)
        offsets = FFMPEG_VORBIS_OFFSETS.get(decoded.shape[1], list(range(decoded.shape[1])))
        pcm = np.empty_like(decoded)
        for out, channel in enumerate(offsets):
            pcm[:, channel] = decoded[:, out]
        # The newest second: 1 Hz bins.
        window = pcm[-48000:]
        spectrum = np.abs(np.fft.rfft(window, axis=0))
        freqs = np.fft.rfftfreq(window.shape[0], 1.0 / 48000)
        summary["channel_hz"] = [float(freqs[np.argmax(spectrum[1:, ch]) + 1])
                                 for ch in range(window.shape[1])]
        summary["channel_rms"] = [float(np.sqrt(np.mean(window[:, ch] ** 2)))
                                  for ch in range(window.shape[1])]
    return summary


def stream(host, port, identity_dir, codec, width, height, fps, count, out_path, area, end,
           audio_channels=None):
    area_w, area_h = area
    if audio_channels is not None:
        ask_for_audio_layout(audio_channels)
    if codec == "av1":
        decode_av1_with_dav1d()
    client = MoonlightClient(config_dir=identity_dir)
    client.connect(host, port)
    result = {"frames": 0, "current_game_before": current_game(client)}
    started = time.monotonic()
    try:
        client.start_stream(app="Desktop", width=width, height=height, fps=fps, codec=codec,
                            bitrate_kbps=1500, black_frame_threshold=-1,
                            record_audio=audio_channels is not None, ready_timeout=20.0)
        result["ready_s"] = round(time.monotonic() - started, 3)
        with open(out_path, "wb") as out:
            for frame in client.frames():
                h, w = frame.data.shape[:2]
                y = luma(frame.data[:area_h, :area_w, :])
                if y.shape != (area_h, area_w):
                    raise ValueError(f"a {w}x{h} frame has no {area_w}x{area_h} code area")
                out.write(struct.pack("<IIII", w, h, frame.frame_number & 0xFFFFFFFF,
                                      frame.frame_type & 0xFFFFFFFF))
                out.write(np.ascontiguousarray(y).tobytes())
                result["frames"] += 1
                if result["frames"] >= count:
                    break
        if audio_channels is not None:
            result["audio"] = record_audio(client, AUDIO_SECONDS)
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
    ok = (len(argv) in (13, 14) and argv[0] == "stream" and argv[12] in ("stop", "quit")
          and (len(argv) == 13 or argv[13] in ("2", "6", "8")))
    if not ok:
        sys.exit(__doc__)
    audio_channels = int(argv[13]) if len(argv) == 14 else None
    stream(argv[1], int(argv[2]), argv[3], argv[4], int(argv[5]), int(argv[6]), int(argv[7]),
           int(argv[8]), argv[9], (int(argv[10]), int(argv[11])), argv[12], audio_channels)


if __name__ == "__main__":
    main(sys.argv[1:])
