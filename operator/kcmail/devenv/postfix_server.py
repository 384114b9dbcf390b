"""Postfix with Dovecot SASL as the environment's second SMTP server: a real MTA checking real XOAUTH2.

Debian's ``postfix`` and ``dovecot-core`` run from configuration written into the state directory:
Postfix's smtpd listens on loopback ports, hands AUTH to Dovecot's auth service over TCP, and Dovecot's
``oauth2`` passdb asks the issuer's introspection endpoint whether each bearer token is active. The
mailbox a token may log in as is its ``mailbox`` claim (``username_attribute``), so an AUTH line that
names another mailbox is refused by Dovecot, not by code of ours.

Nothing leaves the machine: every accepted message goes to a ``pipe(8)`` transport that writes it, with
the envelope and the SASL method and user Postfix recorded for the session, into a spool inside the queue
directory (see ``mail_spool.read_spool``). Postfix's own log, the ``sasl_username=`` lines included,
goes to the server's log file.

Postfix must run its master as root (it drops to the ``postfix`` user for each daemon), and neither
server is put in a chroot. Daemons that run as ``postfix``, ``nobody`` or ``dovecot`` reach only the queue
directory, by relative paths from the master's working directory, because the state directory usually
lies under a home that only its owner may enter.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kcmail.devenv.components import PrerequisiteMissing
from kcmail.devenv.processes import ProcessRegistry, port_open, wait_until

HOST = "127.0.0.1"
MASTER = Path("/usr/lib/postfix/sbin/master")
# Postfix's default: an AUTH line longer than this is cut, and the cut base64 is "invalid".
DEFAULT_LINE_LENGTH_LIMIT = 2048
# Keycloak's AUTH line with a Microsoft-sized token is about 4.6 KB; room for a 16 KB token.
LINE_LENGTH_LIMIT = 24 * 1024
SPOOL = "kcmail-mail"
DATA = "data"
# Postfix's pipe(8) runs the delivery command as this user, never as root.
DELIVERY_USER = "nobody"
INSTALL_HINT = "Install Debian's packages: apt-get install postfix dovecot-core"

# Run by pipe(8) in the queue directory: how many envelope values follow, the values one a line, then the
# message. The values come from Postfix (the session's SASL method and user, empty without AUTH, then the
# sender and recipients as accepted); a message is renamed into place only when complete, so a reader never
# sees half of one.
_DELIVER_SH = """\
# deliver.sh QUEUE_ID SASL_METHOD SASL_USERNAME SENDER RECIPIENT... (run by Postfix's pipe transport)
set -eu
umask 077
name="{spool}/$(date +%s%N)-$1"
{{ printf '%s\\n' "$#" "$@"; cat; }} > "$name.tmp"
mv "$name.tmp" "$name.msg"
"""


class PostfixConfigError(ValueError):
    """The Postfix environment's configuration contradicts itself."""


@dataclass(frozen=True)
class PostfixConfig:
    """Where the servers keep their files and what they listen on and trust.

    ``starttls_port`` and ``tls_port`` take Keycloak's AUTH line whole; ``short_line_port`` keeps Postfix's
    default ``line_length_limit`` so that the failure it causes can be seen. ``sasl_port`` is Dovecot's
    auth service, for Postfix only.
    """

    root: Path
    cert_file: Path
    key_file: Path
    ca_file: Path
    introspection_url: str
    client_id: str
    client_secret: str = field(repr=False)
    username_claim: str
    starttls_port: int
    tls_port: int
    short_line_port: int
    sasl_port: int
    refused_domains: tuple[str, ...] = ()
    hostname: str = "postfix.kcmail.test"
    # The address its smtpd ports bind: loopback, or the one-node cluster's host-only bridge (node.py).
    host: str = HOST
    # Google's tokeninfo (the stand-in of google_oauth.py): a second passdb lets its tokens send as the
    # mailbox it names, as Dovecot's own example for Google does. Empty: no such passdb.
    tokeninfo_url: str = ""

    def __post_init__(self) -> None:
        ports = (self.starttls_port, self.tls_port, self.short_line_port, self.sasl_port)
        if len(set(ports)) != len(ports) or min(ports) < 1024:
            raise PostfixConfigError(f"ports must be distinct and unprivileged, got {ports}")
        for value in (self.client_id, self.client_secret, self.username_claim, self.introspection_url):
            # Both configuration formats are line-based: a line break would smuggle in another setting.
            if not value or any(ch in value for ch in "\r\n"):
                raise PostfixConfigError("client id, secret, claim and URL must be non-empty single lines")

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def data_dir(self) -> Path:
        return self.queue_dir / DATA

    @property
    def dovecot_dir(self) -> Path:
        return self.root / "dovecot"

    @property
    def dovecot_run_dir(self) -> Path:
        return run_dir(self.root)

    @property
    def spool_dir(self) -> Path:
        """Where delivered messages land (``mail_spool.read_spool`` reads them)."""
        return self.queue_dir / SPOOL


def run_dir(root: Path) -> Path:
    """Dovecot's ``base_dir`` for the servers under ``root``: short, because it holds Unix sockets.

    A socket's path may have at most 107 bytes, and Dovecot's deepest is ``token-login/tokenlogin``; a
    state directory made by pytest is already too deep. The name is derived from ``root``, so that two
    environments never share one and ``down`` finds it again.
    """
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kcmail-dovecot-{digest}"


def main_cf(config: PostfixConfig) -> str:
    """Postfix's ``main.cf``: loopback only, AUTH only after TLS and only through Dovecot, no local mail."""
    refused = " ".join(f"{{{domain} = 550 5.1.1 Recipient rejected}}" for domain in config.refused_domains)
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": config.queue_dir,
        # Relative to the queue directory, where the master already is when it opens its lock file there
        # as the postfix user, who may not pass through the state directory's parents.
        "data_directory": DATA,
        "mail_owner": "postfix",
        "myhostname": config.hostname,
        # No domain is local: every recipient goes to the recording transport below.
        "mydestination": "",
        "local_recipient_maps": "",
        "inet_interfaces": "loopback-only" if config.host == HOST else f"{HOST}, {config.host}",
        "inet_protocols": "ipv4",
        "maillog_file": "/dev/stdout",
        "smtputf8_enable": "yes",
        "line_length_limit": LINE_LENGTH_LIMIT,
        "smtpd_tls_cert_file": config.cert_file,
        "smtpd_tls_key_file": config.key_file,
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": f"inet:{HOST}:{config.sasl_port}",
        "smtpd_sasl_security_options": "noanonymous",
        # Without AUTH, a relay that does not know the client's address refuses at RCPT, as Exchange does.
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_recipient_restrictions": f"check_recipient_access inline:{{ {refused} }}" if refused else "",
        "default_transport": "kcmail",
        "relay_transport": "kcmail",
        "kcmail_destination_recipient_limit": 50,
        "biff": "no",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def master_cf(config: PostfixConfig) -> str:
    """Postfix's ``master.cf``: three smtpd listeners, the daemons Postfix needs, no chroot anywhere."""
    smtpd = "inet  n       -       n       -       -       smtpd"
    lines = [
        f"{config.host}:{config.starttls_port} {smtpd}",
        f"{config.host}:{config.tls_port} {smtpd} -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt",
        f"{config.host}:{config.short_line_port} {smtpd} -o line_length_limit={DEFAULT_LINE_LENGTH_LIMIT}",
    ]
    services = (
        ("pickup", "unix", "n", "60", "1"), ("cleanup", "unix", "n", "-", "0"), ("qmgr", "unix", "n", "300", "1"),
        ("tlsmgr", "unix", "-", "1000?", "1"), ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "0"), ("defer", "unix", "-", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "0", "bounce"), ("verify", "unix", "-", "-", "1"),
        ("flush", "unix", "n", "1000?", "0"), ("proxymap", "unix", "-", "-", "-"), ("smtp", "unix", "-", "-", "-"),
        ("showq", "unix", "n", "-", "-"), ("error", "unix", "-", "-", "-"), ("retry", "unix", "-", "-", "-", "error"),
        ("discard", "unix", "-", "-", "-"), ("anvil", "unix", "-", "-", "1"), ("scache", "unix", "-", "-", "1"),
        ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
    )
    for name, kind, private, wakeup, limit, *command in services:
        # Columns: service type private unpriv chroot wakeup maxproc command.
        lines.append(f"{name} {kind} {private} - n {wakeup} {limit} {command[0] if command else name}")
    lines.append(f"kcmail unix - n n - - pipe flags=R user={DELIVERY_USER} argv=/bin/sh deliver.sh "
                 "${queue_id} ${sasl_method} ${sasl_username} ${sender} ${recipient}")
    return "\n".join(lines) + "\n"


def dovecot_conf(config: PostfixConfig) -> str:
    """Dovecot as an authentication service only: XOAUTH2 and OAUTHBEARER through the oauth2 passdb."""
    return f"""\
base_dir = {config.dovecot_run_dir}
state_dir = {config.dovecot_dir / "state"}
protocols =
log_path = /dev/stderr
ssl = no
auth_mechanisms = xoauth2 oauthbearer
auth_verbose = yes
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {config.dovecot_dir / "oauth2.conf.ext"}
}}
{_google_passdb(config)}# SMTP AUTH needs no mailbox: a static userdb only satisfies Dovecot's rule that one exists.
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  # The issuer's CA lies in the state directory, which only its owner may enter.
  user = root
  inet_listener {{
    address = {HOST}
    port = {config.sasl_port}
  }}
}}
"""


def _google_passdb(config: PostfixConfig) -> str:
    # Tried when the issuer does not know the token (a passdb's failure continues to the next one).
    if not config.tokeninfo_url:
        return ""
    return f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {config.dovecot_dir / "google-oauth2.conf.ext"}
}}
"""


def google_oauth2_conf(config: PostfixConfig) -> str:
    """The Google passdb's settings: the token appended to the tokeninfo URL, the mailbox in ``email``."""
    return f"""\
tokeninfo_url = {config.tokeninfo_url}?access_token=
username_attribute = email
scope = https://mail.google.com/
tls_ca_cert_file = {config.ca_file}
"""


def oauth2_conf(config: PostfixConfig) -> str:
    """Dovecot's oauth2 passdb settings: introspect every token at the issuer, as its own client.

    Dovecot 2.3 sends ``client_id`` and ``client_secret`` as form fields of the POST, empty unless set here,
    and they override credentials in the URL; Keycloak only answers an introspection by a known client.
    """
    return f"""\
introspection_mode = post
introspection_url = {config.introspection_url}
client_id = {config.client_id}
client_secret = {config.client_secret}
username_attribute = {config.username_claim}
active_attribute = active
active_value = true
tls_ca_cert_file = {config.ca_file}
"""


def require_installed() -> None:
    """Raise ``PrerequisiteMissing`` unless Postfix and Dovecot are installed."""
    missing = [name for name, found in (("postfix", MASTER.exists() and shutil.which("postfix")),
                                        ("dovecot", shutil.which("dovecot"))) if not found]
    if missing:
        raise PrerequisiteMissing(f"{' and '.join(missing)} not installed. {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise PrerequisiteMissing("Postfix's master must start as root; run `kcmail dev up` as root")


def write_config(config: PostfixConfig) -> None:
    """Write both servers' files and the directories Postfix expects, owned as its daemons need them."""
    for directory in (config.config_dir, config.data_dir, config.dovecot_dir / "state"):
        directory.mkdir(parents=True, exist_ok=True)
    # A previous run's sockets would be in the way; Dovecot creates the directory itself.
    shutil.rmtree(config.dovecot_run_dir, ignore_errors=True)
    (config.config_dir / "main.cf").write_text(main_cf(config))
    (config.config_dir / "master.cf").write_text(master_cf(config))
    (config.dovecot_dir / "dovecot.conf").write_text(dovecot_conf(config))
    secret_file = config.dovecot_dir / "oauth2.conf.ext"
    secret_file.write_text(oauth2_conf(config))
    secret_file.chmod(0o600)
    (config.dovecot_dir / "google-oauth2.conf.ext").write_text(google_oauth2_conf(config))
    (config.queue_dir / "deliver.sh").write_text(_DELIVER_SH.format(spool=SPOOL))
    config.spool_dir.mkdir(exist_ok=True)
    postfix = pwd.getpwnam("postfix")
    os.chown(config.data_dir, postfix.pw_uid, postfix.pw_gid)
    nobody = pwd.getpwnam(DELIVERY_USER)
    os.chown(config.spool_dir, nobody.pw_uid, nobody.pw_gid)


def log_shows(log: Path, text: str, *, after: int = 0, timeout: float = 5.0) -> bool:
    """Whether Postfix's log shows ``text`` past byte ``after`` within ``timeout`` seconds.

    Daemons log through postlogd, which may write a line a moment after the client had its reply.
    """
    wanted = text.encode()
    deadline = time.monotonic() + timeout
    while wanted not in log.read_bytes()[after:]:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def remove_runtime(root: Path) -> None:
    """Remove what the servers under ``root`` left outside it (Dovecot's sockets), once they stopped."""
    shutil.rmtree(run_dir(root), ignore_errors=True)


def start(registry: ProcessRegistry, config: PostfixConfig, *, timeout: float = 30.0) -> None:
    """Start Dovecot, then Postfix, and wait until every port listens."""
    require_installed()
    write_config(config)
    dovecot = registry.start("dovecot", ["dovecot", "-F", "-c", str(config.dovecot_dir / "dovecot.conf")])
    wait_until(lambda: port_open(config.sasl_port), server=dovecot, what=f"port {config.sasl_port}",
               timeout=timeout)
    # `postfix check` creates the queue's directories with their owners; its warnings go to the log.
    log = registry.state_dir / "logs" / "postfix.log"
    with log.open("ab") as out:
        subprocess.run(["postfix", "-c", str(config.config_dir), "check"], stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=timeout)
    # -d keeps the master in the process group the registry stops; `postfix start-fg` would detach it.
    master = registry.start("postfix", [str(MASTER), "-c", str(config.config_dir), "-d"])
    for port in (config.starttls_port, config.tls_port, config.short_line_port):
        wait_until(lambda port=port: port_open(port, config.host), server=master, what=f"port {port}", timeout=timeout)
