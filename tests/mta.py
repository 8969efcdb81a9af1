"""A private Postfix: a real MTA on free ports of 127.0.0.1 that delivers every recipient at
example.com to one Maildir the tests read back.

Everything is under one directory (configuration, queue, data, mail, log) and the instance is
its own `master` process in a process group of its own, stopped by its PID: a system Postfix
(on port 25, with /etc/postfix) is neither read nor touched. Postfix's master runs as root
(its daemons then drop to `mail_owner`), so this needs root and Debian's `postfix` package
(`.ci/run` installs it).

Two SMTP listeners share the instance: `port` offers 8BITMIME and SMTPUTF8 (Postfix's
defaults), `seven_bit_port` offers neither, as a strict or old relay would.
"""

from __future__ import annotations

import contextlib
import email
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.local.redis_server import free_port

__all__ = ["DOMAIN", "Delivery", "Postfix", "postfix_missing", "start_postfix"]

DOMAIN = "example.com"  # the one domain the instance accepts and delivers
# Headers Postfix puts above a message it delivers to a Maildir (virtual(8)), and nothing else.
TRACE_HEADERS = ("Return-Path", "X-Original-To", "Delivered-To", "Received")

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.test
mydomain = mta.test
myorigin = $myhostname
mydestination =
# No local delivery, so no aliases (the default list names NIS, which logs a warning).
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
# Nothing leaves the machine: any other domain (a bounce to an outside sender) fails here.
default_transport = error:this test MTA delivers only to {domain}
relay_transport = $default_transport
maillog_file = {root}/log/postfix.log
maillog_file_prefixes = {root}/log
"""
# Only the services a delivery to a virtual mailbox uses; no chroot (the queue is elsewhere).
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
127.0.0.1:{seven_bit_port} inet n - n - - smtpd
  -o smtputf8_enable=no
  -o smtpd_discard_ehlo_keywords=8bitmime
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
proxymap  unix  - - n - - proxymap
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _default(parameter: str) -> str | None:
    """A Postfix parameter's compiled-in default (-d: a machine where Postfix was installed
    with "No configuration" has no /etc/postfix/main.cf to read)."""
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin")
    if postconf is None:
        return None
    found = subprocess.run(
        [postconf, "-d", "-h", parameter], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _daemon_directory() -> Path | None:
    directory = _default("daemon_directory")
    return Path(directory) if directory else None


def _make_queue(queue: Path) -> None:
    """The queue's directories, with the owners and modes Postfix's own list (postfix-files)
    gives them: what `postfix check` creates, without its shell scripts' seconds."""
    meta = Path(_default("meta_directory") or "/etc/postfix")
    for line in (meta / "postfix-files").read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d" or not fields[0].startswith("$queue_directory/"):
            continue
        path = queue / fields[0].removeprefix("$queue_directory/")
        path.mkdir()
        owner = "postfix" if fields[2] == "$mail_owner" else fields[2]
        group = "postdrop" if fields[3] == "$setgid_group" else None
        shutil.chown(path, owner, group)
        path.chmod(int(fields[4], 8))


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    daemons = _daemon_directory()
    if daemons is None or not (daemons / "master").exists():
        return "Postfix is not installed (apt-get install postfix; .ci/run installs it as root)"
    if os.geteuid() != 0:
        return "Postfix's master runs only as root (.ci/run runs the tests as root)"
    return None


@dataclass(frozen=True)
class Delivery:
    """One message as Postfix wrote it to the Maildir, for one envelope recipient."""

    recipient: str  # Delivered-To: the envelope recipient this copy went to
    message_id: str  # as written, angle brackets included
    sender: str  # Return-Path, without the angle brackets
    data: bytes  # the whole file, LF line ends (a Maildir's), Postfix's trace headers on top

    def without_trace(self) -> bytes:
        """The message as the SMTP client sent it: the trace headers Postfix prepends removed,
        line ends back to CRLF. Anything else Postfix added or changed stays in it."""
        lines = self.data.split(b"\n")
        index = 0
        while index < len(lines):
            line = lines[index]
            if line[:1] in (b" ", b"\t"):  # a folded trace header goes on
                index += 1
                continue
            name = line.split(b":", 1)[0].decode("ascii", "replace")
            if name not in TRACE_HEADERS:
                break
            index += 1
        return b"\r\n".join(lines[index:])


@dataclass(frozen=True)
class Postfix:
    """A running private Postfix (see the module's docstring)."""

    root: Path
    port: int  # 8BITMIME and SMTPUTF8 offered
    seven_bit_port: int  # neither offered
    pid: int  # the master process, leader of its own process group

    @property
    def log(self) -> str:
        """Postfix's log so far (for a failing test's message)."""
        path = self.root / "log" / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def problems(self) -> list[str]:
        """The lines of Postfix's log that report a warning, an error or worse."""
        return [
            line
            for line in self.log.splitlines()
            if any(f": {level}: " in line for level in ("warning", "error", "fatal", "panic"))
        ]

    def deliveries(self) -> list[Delivery]:
        """Every message delivered so far, oldest first."""
        inbox = self.root / "mail" / "inbox"
        files = [
            p for sub in ("new", "cur") if (inbox / sub).is_dir() for p in (inbox / sub).iterdir()
        ]
        found = []
        for path in sorted(files, key=lambda p: p.stat().st_mtime_ns):
            data = path.read_bytes()
            # The trace headers carry the envelope, in UTF-8 where it is (SMTPUTF8).
            head = email.message_from_string(data.split(b"\n\n", 1)[0].decode(errors="replace"))
            found.append(
                Delivery(
                    recipient=str(head["Delivered-To"]),
                    message_id=str(head["Message-ID"]).strip(),
                    sender=str(head["Return-Path"]).strip("<>"),
                    data=data,
                )
            )
        return found


def _banner(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as conn:
        conn.settimeout(2)
        return conn.recv(512).startswith(b"220")
    return False


@contextlib.contextmanager
def start_postfix(timeout: float = 15.0) -> Iterator[Postfix]:
    """A private Postfix until the block ends; ready once both listeners greet with 220."""
    missing = postfix_missing()
    daemons = _daemon_directory()
    if missing is not None or daemons is None:
        raise RuntimeError(missing)
    # Postfix's daemons run as `postfix` and must reach the queue: a directory of their own,
    # not under pytest's tmp_path (mode 0700, root's).
    root = Path(tempfile.mkdtemp(prefix="postfix-"))
    try:
        root.chmod(0o755)
        for sub in ("etc", "spool", "data", "mail", "log"):
            (root / sub).mkdir()
        shutil.chown(root / "data", "postfix", "postfix")
        shutil.chown(root / "mail", "postfix", "postfix")
        port, seven_bit_port = free_port(), free_port()
        uid, gid = _ids("postfix")
        (root / "etc" / "main.cf").write_text(
            _MAIN_CF.format(root=root, domain=DOMAIN, uid=uid, gid=gid)
        )
        (root / "etc" / "master.cf").write_text(
            _MASTER_CF.format(port=port, seven_bit_port=seven_bit_port)
        )
        # Postfix pauses and reads main.cf again while it changed in the last seconds (load_file:
        # it may be an edit in progress): dated back, master starts at once, not 2 s later.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(root / "etc" / name, (past, past))
        _make_queue(root / "spool")
        config = str(root / "etc")
        with (root / "log" / "master.err").open("wb") as errors:  # the child keeps its own
            master = subprocess.Popen(
                [str(daemons / "master"), "-c", config, "-d"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,  # its own group: master signals the group when it stops
            )
        instance = Postfix(root, port, seven_bit_port, master.pid)
        try:
            deadline = time.monotonic() + timeout
            while not (_banner(port) and _banner(seven_bit_port)):
                if master.poll() is not None or time.monotonic() > deadline:
                    stderr = (root / "log" / "master.err").read_text(errors="replace")
                    raise RuntimeError(f"Postfix did not start: {stderr}{instance.log[-2000:]}")
                time.sleep(0.05)
            yield instance
        finally:
            _stop(master)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stop(master: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the master (it stops its daemons), then wait until its group is empty."""
    if master.poll() is None:
        master.terminate()
    try:
        master.wait(timeout=10)
    except subprocess.TimeoutExpired:
        master.kill()
        master.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(master.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(master.pid, signal.SIGKILL)  # a daemon that outlived its master: ours, by group


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
