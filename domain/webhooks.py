"""Outbound webhook rules: the retry schedule, when an endpoint is given up on, which addresses may receive."""
import base64
import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

# Seconds from one failed attempt to the next: about 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h. The last
# attempt comes 77.6 h after the first: over 3 days of retries, each with the same webhook-id.
RETRY_DELAYS = (5, 300, 1800, 7200, 18000) + (36000,) * 7
ATTEMPTS = len(RETRY_DELAYS) + 1
DISABLE_AFTER = timedelta(days=5)  # an endpoint whose every attempt failed for this long is disabled
TIMEOUT_SECONDS = 10.0  # a 2xx later than this is a failure
SECRET_BYTES = 24


def retry_delay(attempts: int, scale: float = 1.0) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when none is left."""
    return RETRY_DELAYS[attempts - 1] * scale if attempts <= len(RETRY_DELAYS) else None


def new_secret() -> str:
    """A signing secret as Standard Webhooks gives it: whsec_ and base64 of random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class Refused(ValueError):
    """A URL or address webhooks may not be sent to; the message says why."""


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL's host name, when the URL may receive webhooks: https (http too with allow_private), a host,
    no credentials, and when the host is an IP address, a public one. A name is resolved and checked at
    send time (check_address), since what it resolves to can change."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        raise Refused("must be an https URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise Refused("must name a host, without user or password")
    if port == 0:
        raise Refused("port 0 is not a port")
    literal = _ip(parts.hostname)
    if literal is not None and not allow_private:
        check_address(literal)
    return parts.hostname


def check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> None:
    """Refuse any address but a global unicast one: loopback, private, link-local, unspecified, multicast,
    reserved, shared (CGNAT), documentation ranges, and IPv6 forms of IPv4 (mapped, NAT64, 6to4, Teredo) whose
    IPv4 address is not global either."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        try:
            check_address(embedded)
        except Refused:
            raise Refused(f"{address} ({embedded}) is not a public address") from None
    elif not ip.is_global or ip.is_multicast:
        raise Refused(f"{address} is not a public address")


def _embedded_ipv4(ip) -> ipaddress.IPv4Address | None:
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64: the gateway connects to the embedded address
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
