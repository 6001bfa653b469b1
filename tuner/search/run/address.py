"""Checking a Ray cluster's `--address` before a study starts: ray.init would retry for minutes
where nothing or another server answers, and for 20 s, with no word of why, where the cluster
wants a token the driver does not send."""

from __future__ import annotations

import os
import socket
from typing import Any

from tuner.errors import UserError


def check_address(address: str) -> None:
    """UserError for an `--address` that is neither `auto` nor HOST:PORT, where nothing or a
    server other than Ray's answers, or whose cluster wants a token this driver would not send."""
    if address == "auto":  # Ray finds the cluster this machine belongs to
        return
    if address.startswith("ray://"):  # Tune would run the study's loop, and its callbacks, remotely
        raise UserError(f"--address {address}: Ray Client is not supported; run `tuner search` on "
                        "a node of the cluster with --address HOST:PORT (of `ray start --head`)")
    host, sep, port = address.rpartition(":")
    if not (host and sep and port.isdigit()):
        raise UserError(f"--address {address}: expected HOST:PORT (of `ray start --head`) or "
                        "auto; leave --address out to run on a local Ray")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as conn:
            reply = _first_reply(conn)
    except OSError as err:
        raise UserError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})"
                        "; start one with `ray start --head`, or leave --address out to run on "
                        "a local Ray") from None
    if _another_protocol(reply):  # ray.init would wait minutes on it
        raise UserError(f"--address {address}: the server there is not a Ray cluster (it does not "
                        "answer in gRPC): give the address `ray start --head` printed, port 6379 "
                        "unless it was given --port, not the dashboard's or another service's")
    if os.environ.get("RAY_AUTH_MODE") != "token" and _needs_token(address):
        # `ray start --head` turns token authentication on by itself (Ray >= 2.59), yet a driver
        # given an address sends no token unless told (Ray's choice: not to any address), and
        # ray.init then fails after 20 s of retries.
        raise UserError(f"--address {address}: the cluster uses token authentication (`ray start "
                        "--head` turns it on since Ray 2.59): run with RAY_AUTH_MODE=token, and "
                        "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token (where `ray start "
                        "--head` keeps it on the head node)")


HTTP2_START = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + SETTINGS


def _first_reply(conn: Any) -> bytes:
    """What a server says to the start of an HTTP/2 connection, as a gRPC client (Ray's) opens
    one (b"": nothing within 2 s)."""
    conn.settimeout(2)
    conn.sendall(HTTP2_START)
    try:
        return conn.recv(16)
    except OSError:
        return b""


def _needs_token(address: str) -> bool:
    """Whether the cluster's GCS refuses a client that carries no token (Ray's own client, which
    answers at once where ray.init retries for 20 s)."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    saved = os.dup(2)  # its C++ client logs the refusal on stderr: the message says it better
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        GcsClient(address=address)
    except AuthenticationError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is ray.init's to report
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return False


def _another_protocol(reply: bytes) -> bool:
    """Whether a reply to HTTP2_START is neither gRPC's (an HTTP/2 SETTINGS frame: type 4 in its
    fourth byte) nor TLS's (a cluster with RAY_USE_TLS: an alert or a handshake), nor silence."""
    return len(reply) >= 9 and reply[3] != 4 and reply[0] not in (0x15, 0x16)
