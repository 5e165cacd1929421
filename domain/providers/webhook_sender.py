"""Outbound webhook requests: the receiver's name resolved and every address checked at send time, the
connection made to a checked address (a name that changes between the check and the connect cannot
redirect it), the body signed as Standard Webhooks says, one attempt bounded by the timeout."""
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import certifi
import urllib3
from standardwebhooks import Webhook

from domain.webhooks import TIMEOUT_SECONDS, Refused, check_address, check_url

READ_AT_MOST = 4096  # of a receiver's answer body: only its status counts


@dataclass(frozen=True)
class Attempt:
    status_code: int | None  # None: no HTTP answer
    error: str | None  # None: a 2xx in time
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.error is None


def signature_headers(secret: str, msg_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature (`v1,` HMAC-SHA256 of id.timestamp.body)."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body)}


class WebhookSender:
    def __init__(self, *, allow_private: bool = False, timeout_seconds: float = TIMEOUT_SECONDS,
                 resolve=socket.getaddrinfo) -> None:
        self.allow_private = allow_private
        self._timeout = timeout_seconds
        self._resolve = resolve

    def check(self, url: str) -> None:
        """Refused unless the URL may receive webhooks now: its scheme, and every address its host resolves to."""
        self.addresses(url)

    def addresses(self, url: str) -> list[str]:
        """The checked addresses of the URL's host, in the resolver's order."""
        host = check_url(url, allow_private=self.allow_private)
        parts = urlsplit(url)
        try:
            found = self._resolve(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Refused(f"{host} does not resolve ({exc})") from None
        addresses = list(dict.fromkeys(info[4][0].split("%", 1)[0] for info in found))
        if not addresses:
            raise Refused(f"{host} does not resolve")
        if not self.allow_private:
            for address in addresses:
                check_address(address)
        return addresses

    def send(self, url: str, *, msg_id: str, body: bytes, secret: str) -> Attempt:
        """One POST of the signed body; never raises for the receiver's failings."""
        started = time.monotonic()
        try:
            addresses = self.addresses(url)
        except Refused as exc:
            return Attempt(None, f"refused: {exc}", 0.0)
        headers = {"content-type": "application/json", "user-agent": "billing-webhooks/1",
                   **signature_headers(secret, msg_id, body, datetime.now(UTC))}
        error = "no address"
        for address in addresses:
            try:
                status = self._post(url, address, headers, body, started)
            except urllib3.exceptions.NewConnectionError as exc:
                error = f"connection failed: {_reason(exc)}"
                continue
            except (urllib3.exceptions.TimeoutError, TimeoutError):
                return Attempt(None, f"no answer within {self._timeout:g} s", time.monotonic() - started)
            except urllib3.exceptions.HTTPError as exc:
                return Attempt(None, f"request failed: {_reason(exc)}", time.monotonic() - started)
            seconds = time.monotonic() - started
            if seconds > self._timeout:
                return Attempt(status, f"answered after {self._timeout:g} s", seconds)
            return Attempt(status, None if 200 <= status < 300 else f"answered {status}", seconds)
        return Attempt(None, error, time.monotonic() - started)

    def _post(self, url: str, address: str, headers: dict, body: bytes, started: float) -> int:
        parts = urlsplit(url)
        remaining = max(self._timeout - (time.monotonic() - started), 0.001)
        options = {"timeout": urllib3.Timeout(total=remaining), "retries": False, "maxsize": 1}
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(address, parts.port or 443, server_hostname=parts.hostname,
                                               assert_hostname=parts.hostname, cert_reqs="CERT_REQUIRED",
                                               ca_certs=certifi.where(), **options)
        else:
            pool = urllib3.HTTPConnectionPool(address, parts.port or 80, **options)
        path = parts.path or "/"
        try:
            answer = pool.urlopen("POST", path + (f"?{parts.query}" if parts.query else ""), body=body,
                                  headers=headers | {"host": parts.netloc.rpartition("@")[2]}, redirect=False,
                                  preload_content=False, assert_same_host=False)
            answer.read(READ_AT_MOST)  # within the timeout too; the rest is dropped with the connection
            answer.release_conn()
            return answer.status
        finally:
            pool.close()


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1][:200]
