"""Servers that misbehave on purpose, on loopback, for faults no real server produces on demand.

Each speaks its protocol on a real socket: a token endpoint and an SMTP server that echo back what they
were sent (the client secret, the decoded XOAUTH2 string), a service that answers every request with an
HTML page, one that greets every connection with an HTTP banner where an SMTP greeting belongs, and an SMTP
server that follows a script (connections closed or left unanswered at a chosen step, temporary
replies, XOAUTH2 error challenges). The tenant-boundary tests point MailConfigs and Connections at them
and check that nothing they say reaches a status, an Event, a log or CLI output unredacted; the probe
tests use the scripted one. Every connection is served in a thread with a socket timeout and a bound on
what is read.
"""

from __future__ import annotations

import base64
import http.server
import json
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

_TIMEOUT_SECONDS = 10.0
_MAX_REQUEST_BYTES = 64 * 1024
_MAX_LINES = 50


def _jwt_shaped(secret: str) -> str:
    """A token-shaped string that carries the secret: what a careless server might log or echo."""
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps({"secret": secret}).encode()).decode().rstrip("=")
    return f"{header}.{body}.c2lnbmF0dXJl"


class _EchoTokenHandler(http.server.BaseHTTPRequestHandler):
    """POST: 401 ``invalid_client`` whose description repeats the client secret raw, URL-encoded, in base64,
    in an Authorization header and inside a JWT."""

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_REQUEST_BYTES)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
        secret = (form.get("client_secret") or [""])[0]
        description = (f"client_secret {secret} is not valid (as sent: {urllib.parse.quote(secret, safe='')}, "
                       f"{base64.b64encode(secret.encode()).decode()}); Authorization: Bearer {secret}; "
                       f"token {_jwt_shaped(secret)}")
        body = json.dumps({"error": "invalid_client", "error_description": description}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    """Every request: 200 with an HTML page carrying ``banner``, as an internal service might answer."""

    banner = ""

    def _page(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_REQUEST_BYTES)
        self.rfile.read(length)
        body = f"<html><title>{self.banner}</title><body>{self.banner}: internal build server</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _page

    def log_message(self, format: str, *args: object) -> None:
        return


class _EchoSmtpHandler(socketserver.StreamRequestHandler):
    """An SMTP server that offers AUTH and refuses it, quoting the decoded credentials back in its 535."""

    timeout = _TIMEOUT_SECONDS

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode("utf-8", errors="replace") + b"\r\n")

    def handle(self) -> None:
        self._send("220 echo.kcmail.test ESMTP")
        for _ in range(_MAX_LINES):
            line = self.rfile.readline(_MAX_REQUEST_BYTES).decode(errors="replace").strip()
            if not line:
                return
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                self._send("250-echo.kcmail.test")
                self._send("250-AUTH XOAUTH2 PLAIN LOGIN")
                self._send("250 8BITMIME")
            elif verb == "AUTH":
                mechanism, _, initial = rest.partition(" ")
                try:
                    decoded = base64.b64decode(initial).decode(errors="replace")
                except ValueError:
                    decoded = initial
                # The decoded SASL string, its \x01 and \x00 separators made visible, and the base64 itself,
                # each on a line of its own: together they outgrow the 8 KiB a client reads as one line.
                shown = decoded.replace("\x01", "^A").replace("\x00", "^@")
                self._send(f"535-5.7.8 {mechanism} refused for {shown}")
                self._send(f"535 5.7.8 initial response {initial}")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:
                self._send("502 5.5.2 not here")


# In a script: close the connection instead of answering, or read the command and never answer.
CLOSE = "<close>"
SILENT = "<silent>"


class _ScriptedSmtpHandler(socketserver.StreamRequestHandler):
    """An SMTP server that answers each verb as its ``script`` says, for the faults a real server shows
    only now and then: a connection closed after EHLO or at STARTTLS, a temporary AUTH failure, an XOAUTH2
    error challenge, a server that stops answering. A verb's lines are its replies in turn, one per command
    line the client sends (so ``AUTH`` can be a 334 challenge and then the verdict); a verb the script does
    not name gets the EHLO it lists or a 250."""

    timeout = _TIMEOUT_SECONDS
    script: ClassVar[dict[str, tuple[str, ...]]] = {}
    received: ClassVar[list[tuple[str, int]]] = []  # (verb, line length in bytes), shared with the test

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._send("220 scripted.kcmail.test ESMTP")
        replies = {verb: list(lines) for verb, lines in self.script.items()}
        challenged = False  # the last answer was a 334: the next line is the client's answer to it
        for _ in range(_MAX_LINES):
            raw = self.rfile.readline(_MAX_REQUEST_BYTES)
            if not raw:
                return
            words = raw.decode(errors="replace").split()
            verb = "AUTH" if challenged else (words[0].upper() if words else "")
            self.received.append((verb, len(raw)))
            pending = replies.get(verb)
            answer = pending.pop(0) if pending else None
            challenged = answer is not None and answer.startswith("334")
            if answer == CLOSE:
                return
            if answer == SILENT:
                self.rfile.readline(_MAX_REQUEST_BYTES)  # until the client gives up and closes
                return
            if answer is not None:
                self._send(answer)
            elif verb in ("EHLO", "HELO"):
                self._send("250-scripted.kcmail.test\r\n250 8BITMIME")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:
                self._send("250 ok")


@contextmanager
def scripted_smtp(script: dict[str, tuple[str, ...]]) -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """A :class:`_ScriptedSmtpHandler` server on 127.0.0.1: its port, and the (verb, length) of each line it
    read. A multi-line reply (EHLO's) is one entry, its lines joined with CRLF."""
    received: list[tuple[str, int]] = []
    handler = type("Scripted", (_ScriptedSmtpHandler,), {"script": script, "received": received})
    server = _TCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield _port(server), received
    finally:
        server.shutdown()
        server.server_close()


class _BannerHandler(socketserver.BaseRequestHandler):
    """Greets every connection with an HTTP answer, as a web service on the SMTP port would."""

    banner = ""

    def handle(self) -> None:
        self.request.settimeout(_TIMEOUT_SECONDS)
        self.request.sendall((f"HTTP/1.1 400 Bad Request\r\nServer: {self.banner}\r\n"
                              f"Content-Type: text/html\r\n\r\n<html>{self.banner}</html>\r\n").encode())
        try:
            self.request.recv(_MAX_REQUEST_BYTES)
        except OSError:
            return


class _Threading(socketserver.ThreadingMixIn):
    daemon_threads = True
    allow_reuse_address = True


class _TCPServer(_Threading, socketserver.TCPServer):
    pass


class _HTTPServer(_Threading, http.server.HTTPServer):
    pass


@dataclass(frozen=True)
class HostileServers:
    """Where each runs: the token URLs (plain HTTP on loopback, which the CRD accepts) and SMTP ports."""

    echo_token_url: str
    html_url: str
    echo_smtp_port: int
    banner_port: int
    banner: str


@contextmanager
def hostile_servers(banner: str) -> Iterator[HostileServers]:
    """Start all four on 127.0.0.1 with free ports; ``banner`` is what the internal-looking ones show."""
    html_handler = type("Html", (_HtmlHandler,), {"banner": banner})
    banner_handler = type("Banner", (_BannerHandler,), {"banner": banner})
    servers: list[socketserver.BaseServer] = [
        _HTTPServer(("127.0.0.1", 0), _EchoTokenHandler),
        _HTTPServer(("127.0.0.1", 0), html_handler),
        _TCPServer(("127.0.0.1", 0), _EchoSmtpHandler),
        _TCPServer(("127.0.0.1", 0), banner_handler),
    ]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    ports = [_port(server) for server in servers]
    try:
        yield HostileServers(echo_token_url=f"http://127.0.0.1:{ports[0]}/token",
                             html_url=f"http://127.0.0.1:{ports[1]}", echo_smtp_port=ports[2], banner_port=ports[3],
                             banner=banner)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _port(server: socketserver.BaseServer) -> int:
    address = server.socket.getsockname() if isinstance(server, socketserver.TCPServer) else None
    assert address is not None
    return int(address[1])

