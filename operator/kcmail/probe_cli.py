"""``kcmail probe``: the operator's probe of one MailConfig, run from a laptop before anything is applied.

It reads a MailConfig manifest and the credentials it refers to (a Secret manifest, or flags), makes the
token request and has the SMTP conversation the operator would have (the same code: ``probes``,
``oauth``, ``smtp_probe``), and prints each step with its timing and, on failure, the catalogue reason
with the server's own words. It imports neither kopf nor the Kubernetes client: it starts fast and needs
no cluster. Secrets and tokens are never printed: the report is built from step details and failure
messages, which never carry them.

Unlike the operator, it does not retry an XOAUTH2 refusal with a fresh token: the operator retries
because its cached token may have been revoked, and the token here is always fresh.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import datetime
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from kcmail.answers import TOKEN_ANSWER_LIMIT, limited_client
from kcmail.bridge import GOOGLE_TOKEN_URL
from kcmail.bridge.registry import parse_key
from kcmail.conditions import Failure, Reason
from kcmail.oauth import TokenClient, TokenFailure
from kcmail.probes import send_spec, smtp_target, token_request
from kcmail.smtp_probe import SmtpCredentials, probe_smtp
from kcmail.spec import AuthType, Credentials, MailConfigSpec, ProbeMode, SpecError

if TYPE_CHECKING:
    from kcmail.bridge.google import IssuedToken

EXIT_PASSED = 0
EXIT_PROBE_FAILED = 1
EXIT_BAD_INPUT = 2
CLIENT_SECRET_ENV = "KCMAIL_CLIENT_SECRET"
# The operator's own limits for a token request (handlers.py); --timeout replaces both.
TOKEN_TIMEOUT = 15.0
TOKEN_CONNECT_TIMEOUT = 10.0
# Stands in for the Secret's uid/resourceVersion, part of the token cache key: a manifest on disk has none.
_FILE_SECRET_VERSION = "file"


class InputError(Exception):
    """A file, a Secret key or a flag is missing or unreadable; the message says which and how to fix it."""


@dataclass(frozen=True)
class ProbeInput:
    mailconfig: str  # namespace/name, or the name alone when the manifest has no namespace
    spec: MailConfigSpec
    credentials: Credentials
    credentials_from: str  # where the credentials were read, for the report; never the values
    recipient: str = ""  # --send-to


@dataclass(frozen=True)
class ReportStep:
    name: str
    ok: bool
    seconds: float
    detail: str
    reason: str | None = None


@dataclass(frozen=True)
class ProbeReport:
    mailconfig: str
    target: Mapping[str, Any]
    steps: tuple[ReportStep, ...]
    failure: Failure | None = None
    probe_id: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


# -- inputs ------------------------------------------------------------------------------------------------


def parse_manifests(text: str, source: str) -> list[Mapping[str, Any]]:
    """The objects of a (multi-document) YAML file; empty documents are skipped."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        # Only the position and the problem: the parser's snippet could quote a secret value.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise InputError(f"{source}: not valid YAML{where}: {problem}") from None
    objects = [doc for doc in documents if doc is not None]
    if any(not isinstance(doc, Mapping) for doc in objects):
        raise InputError(f"{source}: every YAML document must be a Kubernetes object (a mapping)")
    return objects


def read_manifests(path: Path) -> list[Mapping[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {_os_reason(error)}") from None
    return parse_manifests(text, str(path))


def _os_reason(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return type(error).__name__


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def select_mailconfig(objects: Sequence[Mapping[str, Any]], source: str,
                      name: str | None = None) -> tuple[str, str | None, MailConfigSpec]:
    """(name, namespace, parsed spec) of the MailConfig in ``objects``; ``name`` picks one of several."""
    found = [obj for obj in objects if obj.get("kind") == "MailConfig"]
    if name is not None:
        found = [obj for obj in found if _meta(obj).get("name") == name]
    if not found:
        which = f"MailConfig named {name!r}" if name else "MailConfig"
        raise InputError(f"{source} holds no {which}")
    if len(found) > 1:
        names = ", ".join(str(_meta(obj).get("name")) for obj in found)
        raise InputError(f"{source} holds {len(found)} MailConfigs ({names}); pick one with --name")
    obj = found[0]
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InputError(f"{source}: the MailConfig has no spec")
    try:
        parsed = MailConfigSpec.parse(spec)
    except SpecError as error:
        raise InputError(f"{source}: MailConfig spec.{error}") from None
    return str(_meta(obj).get("name") or "unnamed"), _meta(obj).get("namespace"), parsed


def find_secret(objects: Sequence[Mapping[str, Any]], name: str, namespace: str | None) -> Mapping[str, Any] | None:
    """The Secret ``name``; one that names another namespace than the MailConfig's is not the one it reads."""
    for obj in objects:
        meta = _meta(obj)
        if obj.get("kind") != "Secret" or meta.get("name") != name:
            continue
        if namespace and meta.get("namespace") and meta.get("namespace") != namespace:
            continue
        return obj
    return None


def secret_values(secret: Mapping[str, Any], source: str) -> dict[str, str]:
    """A Secret manifest's values: ``data`` decoded from base64, then ``stringData`` over it, as the API server
    merges them."""
    name = _meta(secret).get("name")
    values: dict[str, str] = {}
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(string_data, Mapping):
        raise InputError(f"{source}: Secret {name}: data and stringData must be mappings")
    for key, encoded in data.items():
        try:
            values[str(key)] = base64.b64decode(str(encoded), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InputError(f"{source}: Secret {name}: data key {key!r} is not base64 of UTF-8 text "
                             "(use stringData for plain text)") from None
    values.update({str(key): str(value) for key, value in string_data.items()})
    return values


def read_secret_file(path: Path) -> str:
    """A secret from a file, without the trailing newline editors and ``echo`` add."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {_os_reason(error)}") from None


def resolve_credentials(spec: MailConfigSpec, secret: Mapping[str, str] | None, secret_source: str, *,
                        client_id: str | None = None, client_secret: str | None = None,
                        password: str | None = None,
                        client_secret_origin: str = "") -> tuple[Credentials, str]:
    """The credentials the MailConfig needs, from its Secret's keys with flags taking precedence, and a
    description of where they came from (``client_secret_origin`` names the flag or variable that gave
    ``client_secret``). Raises :class:`InputError` naming the missing key and the flag that would supply it."""
    auth = spec.auth
    values = secret or {}
    origin: list[str] = []

    def pick(flag_value: str | None, key: str, flag: str, hint: str) -> str:
        if flag_value:
            origin.append(flag)
            return flag_value
        if values.get(key):
            origin.append(secret_source)
            return values[key]
        if secret is not None:
            raise InputError(f"{secret_source} has no (or an empty) key {key!r}, which the MailConfig reads: "
                             f"add it, or give {hint}")
        raise InputError(f"no value for key {key!r} of Secret {auth.secret_name!r}, which the MailConfig reads: "
                         f"give --secret FILE (or put the Secret in the MailConfig's file), or {hint}")

    if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None and auth.xoauth2.google_key_ref is not None:
        # googleServiceAccount: the key itself, for the grant the bridge would make.
        key_ref = auth.xoauth2.google_key_ref
        if not values.get(key_ref.key):
            where = secret_source if secret is not None else f"no Secret {key_ref.name!r}"
            raise InputError(f"{where} holds the service account's key under {key_ref.key!r}: give --secret FILE "
                             f"(or put the Secret in the MailConfig's file), e.g. kubectl create secret generic "
                             f"{key_ref.name} --from-file={key_ref.key}=KEY.json --dry-run=client -o yaml")
        text = values[key_ref.key]
        origin.append(secret_source)
        key = parse_key(text)
        if isinstance(key, str):
            raise InputError(f"the value of key {key_ref.key!r} of {secret_source} {key}")
        return (Credentials(secret_version=_FILE_SECRET_VERSION, client_id=str(key["client_email"]),
                            service_account_key=text), " and ".join(dict.fromkeys(origin)))
    if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None:
        ref = auth.xoauth2.client_secret_ref
        if ref is None:
            raise InputError("the MailConfig names no clientSecretRef")
        credentials = Credentials(
            secret_version=_FILE_SECRET_VERSION,
            client_id=pick(client_id, ref.client_id_key, "--client-id", "--client-id"),
            client_secret=pick(client_secret, ref.client_secret_key, client_secret_origin or "--client-secret-file",
                               f"--client-secret-file or ${CLIENT_SECRET_ENV}"))
    elif auth.type is AuthType.BASIC and auth.basic is not None:
        credentials = Credentials(secret_version=_FILE_SECRET_VERSION,
                                  password=pick(password, auth.basic.password_secret_ref.key, "--password-file",
                                                "--password-file"))
    else:
        return Credentials(secret_version=""), "none needed (auth.type None)"
    return credentials, " and ".join(dict.fromkeys(origin))


@dataclass(frozen=True)
class ProbeOptions:
    mailconfig_file: Path
    secret_file: Path | None = None
    name: str | None = None
    client_id: str | None = None
    client_secret_file: Path | None = None
    password_file: Path | None = None
    send_to: str | None = None
    # googleServiceAccount: where the grant goes (Google's; a stand-in in tests).
    google_token_url: str = GOOGLE_TOKEN_URL


def read_inputs(options: ProbeOptions, environ: Mapping[str, str]) -> ProbeInput:
    """Everything the probe needs, from files, flags and ``environ``; :class:`InputError` on bad input."""
    objects = read_manifests(options.mailconfig_file)
    name, namespace, spec = select_mailconfig(objects, str(options.mailconfig_file), options.name)
    secret_name = spec.auth.secret_name
    secret: dict[str, str] | None = None
    secret_source = ""
    if secret_name is not None:
        if options.secret_file is not None:
            holder, holder_source = read_manifests(options.secret_file), str(options.secret_file)
            found = find_secret(holder, secret_name, namespace)
            if found is None:
                held = ", ".join(str(_meta(o).get("name")) for o in holder if o.get("kind") == "Secret") or "none"
                raise InputError(f"{holder_source} holds no Secret named {secret_name!r} "
                                 f"(the MailConfig refers to it; Secrets in the file: {held})")
        else:
            holder_source = str(options.mailconfig_file)
            found = find_secret(objects, secret_name, namespace)
        if found is not None:
            secret = secret_values(found, holder_source)
            secret_source = f"Secret {secret_name} in {holder_source}"
    client_secret = (read_secret_file(options.client_secret_file) if options.client_secret_file
                     else environ.get(CLIENT_SECRET_ENV) or None)
    password = read_secret_file(options.password_file) if options.password_file else None
    credentials, origin = resolve_credentials(
        spec, secret, secret_source, client_id=options.client_id, client_secret=client_secret, password=password,
        client_secret_origin="--client-secret-file" if options.client_secret_file else f"${CLIENT_SECRET_ENV}")
    if spec.auth.xoauth2 is not None and spec.auth.xoauth2.google_key_ref is not None:
        # The probe asks Google directly, as the bridge would; the report names Google's endpoint.
        spec = dataclasses.replace(spec, auth=dataclasses.replace(spec.auth, xoauth2=dataclasses.replace(
            spec.auth.xoauth2, token_url=options.google_token_url)))
    _check_token_url(spec, str(options.mailconfig_file))
    if options.send_to is None and spec.probe.smtp is ProbeMode.SEND and not spec.probe.recipient:
        raise InputError(f"{options.mailconfig_file}: probe.smtp is Send but probe.recipient is empty; "
                         "set it or give --send-to")
    return ProbeInput(mailconfig=f"{namespace}/{name}" if namespace else name, spec=spec,
                      credentials=credentials, credentials_from=origin, recipient=options.send_to or "")


def _check_token_url(spec: MailConfigSpec, source: str) -> None:
    """A token URL httpx cannot even parse would surface as a traceback, not as a probe step."""
    if spec.auth.xoauth2 is None:
        return
    url = spec.auth.xoauth2.token_url
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("https", "http") or not parsed.host:
        raise InputError(f"{source}: auth.xoauth2.tokenURL {url!r} is not an https:// URL with a host")


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system CAs plus ``--ca-bundle``: what the operator trusts with its own ``--ca-bundle``."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "no PEM certificates"
            raise InputError(f"cannot use --ca-bundle {ca_bundle}: {reason}") from None
    return context


# -- the probe ---------------------------------------------------------------------------------------------


def describe(probe: ProbeInput) -> dict[str, Any]:
    """What is probed, for the report's header: addresses, names and where credentials came from."""
    spec = probe.spec
    target: dict[str, Any] = {
        "smtp": f"{spec.smtp.host}:{spec.smtp.port}", "security": spec.smtp.security.value,
        "auth": spec.auth.type.value, "username": spec.auth.username, "credentials": probe.credentials_from,
    }
    if spec.auth.type is AuthType.XOAUTH2 and spec.auth.xoauth2 is not None:
        target.update(tokenURL=spec.auth.xoauth2.token_url, clientID=probe.credentials.client_id,
                      scope=spec.auth.xoauth2.scope)
    send = send_spec(spec, probe.mailconfig, probe.recipient)
    target["send"] = f"{send.sender} -> {send.recipient}" if send else ""
    return target


def token_detail(url: str, status: int | None, expires_in: int, scope: str) -> str:
    host = httpx.URL(url).netloc.decode("ascii")
    answered = f"HTTP {status}" if status is not None else "a token"
    return f"{host} answered {answered}; the token expires in {expires_in} s" + (f" (scope {scope})" if scope else "")


async def run_probe(probe: ProbeInput, tls: ssl.SSLContext, step_timeout: float | None = None, *,
                    ca_bundle: Path | None = None) -> ProbeReport:
    """The token request (XOAUTH2), then the SMTP conversation; stops at the first failure.

    ``ca_bundle``: ``--ca-bundle``, trusted beside the system's CAs for Google's token endpoint too
    (googleServiceAccount).
    """
    spec = probe.spec
    steps: list[ReportStep] = []
    request = token_request(spec, probe.credentials)
    secret = probe.credentials.password if spec.auth.type is AuthType.BASIC else ""
    if spec.auth.xoauth2 is not None and spec.auth.xoauth2.google_key_ref is not None:
        started = time.monotonic()
        granted = await _google_token(probe, ca_bundle, step_timeout or TOKEN_TIMEOUT)
        if isinstance(granted, Failure):
            steps.append(ReportStep("token", False, time.monotonic() - started, granted.message, granted.reason.value))
            return ProbeReport(probe.mailconfig, describe(probe), tuple(steps), granted)
        expires_in = round((granted.expires_at - datetime.datetime.now(datetime.UTC)).total_seconds())
        steps.append(ReportStep("token", True, time.monotonic() - started,
                                token_detail(spec.auth.xoauth2.token_url, None, expires_in, spec.auth.xoauth2.scope)))
        secret, request = granted.access_token, None
    if request is not None:
        statuses: list[int] = []

        async def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        limits = httpx.Timeout(step_timeout or TOKEN_TIMEOUT, connect=step_timeout or TOKEN_CONNECT_TIMEOUT)
        async with limited_client(TOKEN_ANSWER_LIMIT, verify=tls, timeout=limits,
                                  event_hooks={"response": [record]}) as http:
            started = time.monotonic()
            try:
                token = await TokenClient(http).token(request)
            except TokenFailure as error:
                steps.append(ReportStep("token", False, time.monotonic() - started, error.failure.message,
                                        error.failure.reason.value))
                return ProbeReport(probe.mailconfig, describe(probe), tuple(steps), error.failure)
            elapsed = time.monotonic() - started
        expires_in = round((token.expires_at - datetime.datetime.now(datetime.UTC)).total_seconds())
        steps.append(ReportStep("token", True, elapsed, token_detail(request.url, statuses[-1] if statuses else None,
                                                                      expires_in, request.scope)))
        secret = token.access_token
    result = await probe_smtp(smtp_target(spec, step_timeout),
                              SmtpCredentials(spec.auth.type, spec.auth.username, secret), tls,
                              send=send_spec(spec, probe.mailconfig, probe.recipient))
    for step in result.steps:
        reason = result.failure.reason.value if not step.ok and result.failure else None
        steps.append(ReportStep(step.name, step.ok, step.seconds, step.detail, reason))
    sent = any(step.name == "send" and step.ok for step in result.steps)
    return ProbeReport(probe.mailconfig, describe(probe), tuple(steps), result.failure,
                       result.probe_id if sent else "")


async def _google_token(probe: ProbeInput, ca_bundle: Path | None, seconds: float) -> IssuedToken | Failure:
    """The token Google grants the service account for the mailbox, as the bridge would ask for it."""
    from kcmail.bridge.google import GoogleRefused, GoogleUnreachable, KeyUnusable, google_grant
    from kcmail.bridge.registry import BridgeClient

    spec = probe.spec
    assert spec.auth.xoauth2 is not None
    key = json.loads(probe.credentials.service_account_key)
    client = BridgeClient(client_id="kcmail-probe", mailbox=spec.auth.username, key=key, secret_sha256="")
    try:
        with tempfile.TemporaryDirectory(prefix="kcmail-probe-") as scratch:
            grant = google_grant(spec.auth.xoauth2.token_url, _google_verify(ca_bundle, Path(scratch)), seconds)
            return await asyncio.to_thread(grant, client)
    except GoogleRefused as refused:
        return Failure(Reason.GOOGLE_REFUSED, f"Google answered: {refused}", needs_person=True)
    except GoogleUnreachable as error:
        return Failure(Reason.TOKEN_ENDPOINT_UNREACHABLE, f"Google's token endpoint: {error}")
    except KeyUnusable as error:
        return Failure(Reason.INVALID_SECRET_VALUE, str(error), needs_person=True)


def _google_verify(ca_bundle: Path | None, scratch: Path) -> str | bool:
    """What the grant trusts (requests' ``verify``): the system's CAs, plus ``--ca-bundle`` when given, in a
    file under ``scratch``, which the caller removes."""
    if ca_bundle is None:
        return True
    import certifi

    combined = scratch / "ca.pem"
    combined.write_text(Path(certifi.where()).read_text() + "\n" + ca_bundle.read_text())
    return str(combined)


# -- rendering (pure) --------------------------------------------------------------------------------------


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def render_text(report: ProbeReport) -> str:
    """The report for a person: what is probed, one line per step, and the verdict."""
    target = report.target
    lines = [f"kcmail probe of MailConfig {report.mailconfig}",
             f"  SMTP server   {target['smtp']} ({target['security']})",
             f"  auth          {target['auth']}" + (f" as {target['username']}" if target.get("username") else "")]
    if target.get("tokenURL"):
        scope = f", scope {target['scope']}" if target.get("scope") else ""
        lines.append(f"  token from    {target['tokenURL']} (client {target['clientID']}{scope})")
    lines.append(f"  credentials   {target['credentials']}")
    if target.get("send"):
        lines.append(f"  probe mail    {target['send']}")
    lines.append("")
    width = max((len(step.name) for step in report.steps), default=0)
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        detail = step.detail if step.ok else f"{step.reason}: {step.detail}"
        lines.append(f"  {mark} {step.name:<{width}}  {_milliseconds(step.seconds):>7}  {detail}")
    total = _milliseconds(sum(step.seconds for step in report.steps))
    lines.append("")
    if report.failure is None:
        lines.append(f"PASSED: every step passed in {total}.")
    else:
        failed = next((step for step in report.steps if not step.ok), None)
        if failed is None:  # the server dropped the conversation between steps
            lines.append(f"FAILED: {report.failure.reason.value}: {report.failure.message}")
        else:
            lines.append(f"FAILED at {failed.name}: {report.failure.reason.value} "
                         "(docs/troubleshooting.md says what it means and what to do).")
    return "\n".join(lines) + "\n"


def _step_json(step: ReportStep) -> dict[str, Any]:
    fields = asdict(step)
    fields["seconds"] = round(step.seconds, 3)
    if step.reason is None:
        del fields["reason"]
    return fields


def render_json(report: ProbeReport) -> str:
    """The report for scripts: one JSON document."""
    document = {
        "mailconfig": report.mailconfig,
        "ok": report.ok,
        "target": dict(report.target),
        "steps": [_step_json(step) for step in report.steps],
        "failure": ({"reason": report.failure.reason.value, "message": report.failure.message}
                    if report.failure else None),
        "probeID": report.probe_id or None,
    }
    return json.dumps(document, indent=2) + "\n"


# -- the command -------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    probe = subparsers.add_parser(
        "probe", help="probe a MailConfig's token endpoint and SMTP server from here, before applying it",
        description="Run the operator's probe of a MailConfig manifest: token request (XOAUTH2), connect, TLS, "
                    "EHLO, AUTH and, in Send mode or with --send-to, a probe message. Exit 0: every step passed; "
                    "1: a step failed; 2: bad input.")
    probe.add_argument("mailconfig", type=Path, help="YAML file holding the MailConfig (and maybe its Secret)")
    probe.add_argument("--name", help="which MailConfig, when the file holds several")
    probe.add_argument("--secret", type=Path, metavar="FILE",
                       help="YAML file holding the Secret the MailConfig refers to")
    probe.add_argument("--client-id", metavar="ID", help="XOAUTH2 client ID (instead of the Secret's key)")
    probe.add_argument("--client-secret-file", type=Path, metavar="PATH",
                       help=f"file holding the XOAUTH2 client secret (or set ${CLIENT_SECRET_ENV})")
    probe.add_argument("--password-file", type=Path, metavar="PATH", help="file holding the Basic auth password")
    probe.add_argument("--send-to", metavar="ADDRESS", help="also send a probe message to ADDRESS")
    probe.add_argument("--ca-bundle", type=Path, metavar="FILE",
                       help="PEM file of extra CAs to trust, like the operator's --ca-bundle")
    probe.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                       help="seconds allowed for each network step (default: the MailConfig's smtp.timeouts, "
                            f"{TOKEN_TIMEOUT:.0f} s for the token request)")
    probe.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    probe.add_argument("--google-token-url", default=GOOGLE_TOKEN_URL, metavar="URL",
                       help="googleServiceAccount: Google's token endpoint, asked directly as the bridge asks it "
                            "(default %(default)s)")
    probe.set_defaults(handler=main)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError("give between 0 and 3600 seconds")
    return seconds


def main(args: argparse.Namespace) -> int:
    options = ProbeOptions(mailconfig_file=args.mailconfig, secret_file=args.secret, name=args.name,
                           client_id=args.client_id, client_secret_file=args.client_secret_file,
                           password_file=args.password_file, send_to=args.send_to,
                           google_token_url=args.google_token_url)
    try:
        probe = read_inputs(options, os.environ)
        tls = tls_context(args.ca_bundle)
    except InputError as error:
        print(f"kcmail probe: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = asyncio.run(run_probe(probe, tls, args.timeout, ca_bundle=args.ca_bundle))
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    return EXIT_PASSED if report.ok else EXIT_PROBE_FAILED
