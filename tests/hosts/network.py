"""Hosts on one machine: network namespaces on a private bridge, each with one address of a private /24.

The bridge sits in the root namespace with the subnet's first address, so this process (the client, the
operator) reaches every host; the hosts have no default route, so their traffic stays between them. Names
carry the owning process's pid (`bhost-<pid>-<n>-<host>`, bridge `bh<pid>-<n>`): a run never collides with
another, and what a killed run left behind is removed by the next one (remove_stale).
"""
import ipaddress
import itertools
import os
import random
import re
import signal
import subprocess
from dataclasses import dataclass, field

NAMESPACE_PREFIX = "bhost-"
INTERFACE = "net0"  # each host's end of its veth pair
_OWNED_NAMESPACE = re.compile(r"^bhost-(\d+)-\d+-")
_OWNED_LINK = re.compile(r"^bh(\d+)-\d+")
_runs = itertools.count(1)


class NetworkError(RuntimeError):
    """An ip(8) command failed: its command line and what it printed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces and bridges of runs whose process is gone; their names."""
    namespaces = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    links = [line.split()[0].split("@")[0] for line in ip("-br", "link").stdout.splitlines() if line.strip()]
    removed = []
    for kind, names, pattern in (("netns", namespaces, _OWNED_NAMESPACE), ("link", links, _OWNED_LINK)):
        for name in names:
            owner = pattern.match(name)
            if owner and not _alive(int(owner.group(1))):
                if kind == "netns":
                    _kill_everything_in(name)
                ip(*(("netns", "delete", name) if kind == "netns" else ("link", "delete", name)), check=False)
                removed.append(name)
    return removed


def _kill_everything_in(namespace: str) -> None:
    """SIGKILL the processes a killed run left in its namespace (started in sessions of their own, they
    outlive it)."""
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no route of this machine covers or overlaps (other runs' bridges included)."""
    taken = [ipaddress.ip_network(line.split()[0], strict=False)
             for line in ip("-4", "route", "show", "table", "all").stdout.splitlines()
             if line and line.split()[0][0].isdigit()]
    rng = random.Random()
    for _ in range(200):
        subnet = ipaddress.ip_network(f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise NetworkError(f"no free 10.x.y.0/24 among the routes {taken}")


@dataclass
class Host:
    name: str  # db, api, w1, ...
    namespace: str
    address: str
    root_end: str  # the veth end plugged into the bridge

    def run(self, argv: list[str], user: str | None = None) -> list[str]:
        """The command line that runs argv on this host (as `user`, when given: we are root)."""
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
        return ["ip", "netns", "exec", self.namespace, *as_user, *argv]

    def cut(self) -> None:
        """Take the host's link down from inside the host: no FIN, no RST reaches its peers."""
        ip("-n", self.namespace, "link", "set", INTERFACE, "down")

    def restore(self) -> None:
        ip("-n", self.namespace, "link", "set", INTERFACE, "up")


@dataclass
class Network:
    """A bridge and its hosts; remove() deletes them all (deleting a namespace deletes its veth pair)."""
    bridge: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls, names: list[str]) -> "Network":
        remove_stale()
        run = f"{os.getpid()}-{next(_runs)}"
        network = cls(bridge=f"bh{run}", subnet=_free_subnet())
        try:
            ip("link", "add", network.bridge, "type", "bridge")
            ip("addr", "add", f"{network.gateway}/24", "dev", network.bridge)
            ip("link", "set", network.bridge, "up")
            for n, name in enumerate(names, start=2):
                network.hosts[name] = network._add_host(run, name, str(network.subnet.network_address + n), n)
        except BaseException:
            network.remove()
            raise
        return network

    def _add_host(self, run: str, name: str, address: str, n: int) -> Host:
        host = Host(name, f"{NAMESPACE_PREFIX}{run}-{name}", address, f"bh{run}h{n}")
        ip("netns", "add", host.namespace)
        ip("link", "add", host.root_end, "type", "veth", "peer", "name", INTERFACE, "netns", host.namespace)
        ip("link", "set", host.root_end, "master", self.bridge)
        ip("link", "set", host.root_end, "up")
        ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", INTERFACE)
        ip("-n", host.namespace, "link", "set", INTERFACE, "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def remove(self) -> None:
        for host in self.hosts.values():
            ip("netns", "delete", host.namespace, check=False)
            # sockets still closing keep a deleted namespace, and its veth pair, alive for minutes
            ip("link", "delete", host.root_end, check=False)
        ip("link", "delete", self.bridge, check=False)
