"""Drives the real Moonlight client (moonlight-python 0.3.0) against a lumen host for
tests/tests/gamestream_pairing.rs. Each call is one step; the last stdout line is a JSON object.

  pair HOST HTTP_PORT IDENTITY_DIR PIN   pair with a fixed PIN (the host's stage 1 waits for it)
  applist HOST HTTP_PORT IDENTITY_DIR    /serverinfo over HTTP, then /serverinfo and /applist
                                         over mutual TLS with this identity's certificate
  cert_sha256 IDENTITY_DIR               SHA-256 of the identity's certificate DER

Client-side failures are reported in the JSON ("error", "status_code"), never as a traceback,
so the test can tell a refusal (401, wrong PIN) from a broken client.
"""

import hashlib
import json
import sys
import threading

from moonlight_python import MoonlightClient
from moonlight_python.discovery import connect_to_server
from moonlight_python.exceptions import HttpResponseError, WrongPinError, PairingError
from moonlight_python.http_client import NvHTTP


def emit(result):
    print(json.dumps(result), flush=True)


def pair(host, port, identity_dir, pin):
    client = MoonlightClient(config_dir=identity_dir)
    server = connect_to_server(host, client._identity, port=port)
    outcome = {}

    def run():
        try:
            client.pair(server, pin=pin)
            outcome["paired"] = True
        except WrongPinError as e:
            outcome["error"] = "wrong_pin"
            outcome["message"] = str(e)
        except PairingError as e:
            outcome["error"] = "pairing"
            outcome["message"] = str(e)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            outcome["error"] = type(e).__name__
            outcome["message"] = str(e)

    # As the test-environment notes say: pairing runs in a thread (stage 1 blocks until the host
    # has the PIN); the main thread bounds the wait.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    if thread.is_alive():
        outcome = {"error": "timeout", "message": "pair() did not return within 120 s"}
    outcome.setdefault("paired", False)
    outcome["https_port"] = server.https_port
    outcome["app_version"] = server.app_version
    outcome["codecs"] = server.server_codec_mode_support
    emit(outcome)


def applist(host, port, identity_dir):
    client = MoonlightClient(config_dir=identity_dir)
    server = connect_to_server(host, client._identity, port=port)
    http = NvHTTP(host, client._identity, http_port=port, https_port=server.https_port)
    result = {"http_pair_status": server.paired, "hostname": server.hostname}
    try:
        xml = http.open_https("serverinfo")
        NvHTTP.verify_response_status(xml)
        result["https_pair_status"] = NvHTTP.get_xml_string(xml, "PairStatus")
        apps = http.get_app_list()
        result["apps"] = [{"id": a.id, "name": a.name} for a in apps]
        result["status_code"] = 200
    except HttpResponseError as e:
        result["status_code"] = e.status_code
        result["message"] = e.status_message
        # A refused client is refused on every endpoint, not only the first: try the app list and
        # a launch on their own (a paired client never gets here, so nothing is launched).
        attempts = (
            ("applist", http.get_app_list),
            ("launch", lambda: http.launch_app(1, 640, 360, 30, 1000, 1, bytes(16), bytes(16), 0)),
        )
        for name, call in attempts:
            try:
                call()
                result[f"{name}_status_code"] = 200
            except HttpResponseError as refused:
                result[f"{name}_status_code"] = refused.status_code
    emit(result)


def cert_sha256(identity_dir):
    client = MoonlightClient(config_dir=identity_dir)
    emit({"sha256": hashlib.sha256(client._identity.cert_der).hexdigest()})


def main(argv):
    if len(argv) == 5 and argv[0] == "pair":
        pair(argv[1], int(argv[2]), argv[3], argv[4])
    elif len(argv) == 4 and argv[0] == "applist":
        applist(argv[1], int(argv[2]), argv[3])
    elif len(argv) == 2 and argv[0] == "cert_sha256":
        cert_sha256(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
