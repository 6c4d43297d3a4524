"""Hosts on one machine: a Linux network namespace each, joined by veth pairs to a bridge that
lives in a namespace of its own (the switch), on one small subnet made for the run.

The machine's interfaces are untouched but for one veth pair, ``control``: the test process
itself joins the subnet through it, to read the fake API and the database as an operator
would. Nothing is sent outside the subnet or loopback: no host has a default route.

A partition between two hosts poisons each one's neighbour entry for the other (a MAC that
no port has): their packets go nowhere, both ways, with no FIN and no RST, while both keep
talking to every other host. This kernel has no ``netem`` and no tc actions, so latency and
loss come from ``linkproxy`` instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

NOWHERE = "02:00:00:00:00:01"  # no port of the switch has it


def unavailable() -> str | None:
    """Why hosts cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


def tag() -> str:
    """A name for this process's cluster, by which ``sweep_stale`` knows whose it is."""
    return f"cio{os.getpid()}"


def sweep_stale() -> None:
    """Delete the namespaces (and stop the processes) of clusters whose process is gone: a run
    that was killed had no chance to."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        owner = re.match(r"cio(\d+)-", name)
        if owner and not Path(f"/proc/{owner[1]}").exists():
            for pid in _ip("netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Host:
    name: str
    netns: str
    address: str
    mac: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host."""
        return ["ip", "netns", "exec", self.netns, *argv]


class Cluster:
    """``Cluster(tag)`` then ``add("broker")``...; ``close()`` stops every process it started
    and deletes every namespace (and with it every veth)."""

    def __init__(self, tag: str, logs: Path) -> None:
        self.tag, self.logs = tag, logs
        sweep_stale()
        self.subnet = self._free_subnet()
        self.hosts: dict[str, Host] = {}
        self.cleanups: list[Callable[[], object]] = []  # after every process has stopped
        self.switch = f"{tag}-switch"
        self._addresses = iter(self.subnet.hosts())
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            self.control = self._join(None, "control")
        except Exception:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        """A /24 of 10.213.0.0/16 that no route of the machine uses (two runs may overlap)."""
        used = _ip("-4", "route", "show", "table", "all")
        for third in range(os.getpid() % 250, os.getpid() % 250 + 250):
            subnet = ipaddress.ip_network(f"10.213.{third % 250}.0/24")
            if str(subnet) not in used:
                return subnet
        raise RuntimeError("no free /24 in 10.213.0.0/16")

    def add(self, name: str) -> Host:
        netns = f"{self.tag}-{name}"
        self.hosts[name] = Host(name, netns, "")  # deleted by close() whatever happens next
        _ip("netns", "add", netns)
        self.hosts[name] = self._join(netns, name)
        return self.hosts[name]

    def _join(self, netns: str | None, name: str) -> Host:
        """A veth pair from ``netns`` (``None``: this process's own) to the switch."""
        address = str(next(self._addresses))
        port = f"p-{name}"[:15]
        inside = "eth0" if netns else f"{self.tag}c"[:15]
        where = ["-n", netns] if netns else []
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", inside,
            "netns", netns or str(os.getpid()))
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip(*where, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inside)
        _ip(*where, "link", "set", inside, "up")
        if netns:
            _ip("-n", netns, "link", "set", "lo", "up")
        mac = _ip(*where, "-br", "link", "show", inside).split()[2]
        return Host(name, netns or "", address, mac)

    def start(self, host: Host, name: str, argv: list[str], env: dict[str, str],
              user: str | None = None) -> subprocess.Popen[bytes]:
        """A process on ``host`` (in a session of its own), logged to ``logs/<name>.log``."""
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(host.command(argv), env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        host.processes.append(process)
        return process

    def run(self, host: Host, argv: list[str], env: dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(host.command(argv), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def partition(self, a: Host, b: Host) -> None:
        """Cut ``a`` from ``b`` both ways, silently: established connections get no FIN."""
        _ip("-n", a.netns, "neigh", "replace", b.address, "lladdr", NOWHERE, "dev", "eth0",
            "nud", "permanent")
        _ip("-n", b.netns, "neigh", "replace", a.address, "lladdr", NOWHERE, "dev", "eth0",
            "nud", "permanent")

    def heal(self, a: Host, b: Host) -> None:
        _ip("-n", a.netns, "neigh", "replace", b.address, "lladdr", b.mac, "dev", "eth0",
            "nud", "reachable")
        _ip("-n", b.netns, "neigh", "replace", a.address, "lladdr", a.mac, "dev", "eth0",
            "nud", "reachable")

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
        """SIGTERM to its session, then SIGKILL if it has not finished."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()

    def close(self) -> None:
        try:
            for host in reversed(self.hosts.values()):  # clients first, then their servers
                for process in reversed(host.processes):
                    self.stop(process)
        finally:
            for netns in [*(host.netns for host in self.hosts.values()), self.switch]:
                with contextlib.suppress(subprocess.CalledProcessError):
                    for pid in _ip("netns", "pids", netns).split():  # what a stop left
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("netns", "del", netns)  # its veths go with it, the control one too
            for cleanup in self.cleanups:
                cleanup()
