"""Webhook rules without I/O: the retry schedule, the signature headers, and which addresses may receive."""
import base64
import hashlib
import hmac
import socket
from datetime import UTC, datetime

import pytest

from domain.providers.webhook_sender import WebhookSender, signature_headers
from domain.webhooks import ATTEMPTS, Refused, check_address, check_url, new_secret, retry_delay


def test_retries_start_at_5_seconds_and_span_more_than_3_days_then_stop():
    delays = [retry_delay(n) for n in range(1, ATTEMPTS)]
    assert delays[:5] == [5, 300, 1800, 7200, 18000] and set(delays[5:]) == {36000}
    assert sum(delays) > 3 * 86400 and retry_delay(ATTEMPTS) is None
    assert retry_delay(2, scale=0.001) == pytest.approx(0.3)


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body_with_the_secrets_key():
    """Standard Webhooks' construction, computed here by hand against what the sender sends."""
    secret, body, at = new_secret(), b'{"id":"evt_1"}', datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = signature_headers(secret, "evt_1", body, at)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"evt_1.1767323045." + body, hashlib.sha256).digest()).decode()
    assert headers == {"webhook-id": "evt_1", "webhook-timestamp": "1767323045", "webhook-signature": f"v1,{expected}"}


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.251", "198.18.0.1",
                                     "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
                                     "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:c0a8:101::",
                                     "2001:0:4136:e378:8000:63bf:f5ff:fffe", "2001:db8::1"])
def test_addresses_that_are_not_global_unicast_are_refused(address):
    with pytest.raises(Refused):
        check_address(address)


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.4.4", "2606:4700:4700::1111", "::ffff:1.1.1.1",
                                     "64:ff9b::808:808"])
def test_public_addresses_are_accepted(address):
    check_address(address)


def test_only_https_unless_private_receivers_are_allowed():
    assert check_url("https://hooks.example.com/in", allow_private=False) == "hooks.example.com"
    with pytest.raises(Refused):
        check_url("http://hooks.example.com/in", allow_private=False)
    assert check_url("http://127.0.0.1:8080/in", allow_private=True) == "127.0.0.1"


def test_a_name_is_refused_when_any_address_it_resolves_to_is_not_public():
    def resolve(host, port, type=0, **_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.1.1.1", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:10.0.0.7", port, 0, 0))]
    with pytest.raises(Refused, match="10.0.0.7"):
        WebhookSender(resolve=resolve).check("https://split.example/in")


def test_a_name_that_does_not_resolve_is_refused_and_an_attempt_to_it_fails_without_raising():
    def resolve(host, port, type=0, **_):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    sender = WebhookSender(resolve=resolve)
    with pytest.raises(Refused, match="does not resolve"):
        sender.check("https://gone.example/in")
    attempt = sender.send("https://gone.example/in", msg_id="evt_1", body=b"{}", secret=new_secret())
    assert not attempt.succeeded and attempt.status_code is None and attempt.error.startswith("refused:")
