"""A loopback x402 facilitator and payer wallets, for offline tests.

/verify and /settle run the SDK's own exact-EVM facilitator (scheme, network, payee, exact amount, validity
window, EIP-712 signature recovery, simulation) against an in-memory USDC contract whose
transferWithAuthorization checks what FiatTokenV2 checks. The next settles can be scripted to go wrong the
ways real facilitators do: a timeout before or after the transfer, CDP's HTTP 500 settlement_pending, or a
definite failure. Wallets are eth-account keys that sign real EIP-3009 authorizations, through the SDK's
client or by hand for payloads a well-behaved client would not make.
"""
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eth_account import Account
from eth_account.messages import encode_typed_data
from x402 import x402ClientSync, x402FacilitatorSync
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmClientScheme, register_exact_evm_facilitator
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.types import TransactionReceipt
from x402.schemas import PaymentPayload, PaymentRequired
from x402.schemas.helpers import parse_payment_payload, parse_payment_requirements

from domain.providers.x402_gateway import NETWORKS

TYPES = {"TransferWithAuthorization": [
    {"name": "from", "type": "address"}, {"name": "to", "type": "address"}, {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"}, {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"}]}


class Revert(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(f"execution reverted: {reason}")


def _domain(name: str, version: str, chain_id: int, contract: str) -> dict:
    return {"name": name, "version": version, "chainId": chain_id, "verifyingContract": contract}


def _message(frm, to, value, valid_after, valid_before, nonce: bytes) -> dict:
    return {"from": frm, "to": to, "value": int(value), "validAfter": int(valid_after),
            "validBefore": int(valid_before), "nonce": nonce}


class FakeUsdc:
    """One USDC contract: balances, spent authorizations, and FiatTokenV2's checks on a transfer."""

    def __init__(self, network: str) -> None:
        defaults = NETWORKS[network]
        self.address, self.chain_id = defaults.usdc, defaults.chain_id
        self.name, self.version = defaults.eip712_name, defaults.eip712_version
        self.balances: dict[str, int] = {}
        self.used: set[tuple[str, bytes]] = set()
        self.logs: dict[str, dict] = {}

    def balance(self, address: str) -> int:
        return self.balances.get(address.lower(), 0)

    def check(self, frm, to, value, valid_after, valid_before, nonce: bytes, v, r, s) -> None:
        now = time.time()
        if not now > valid_after:
            raise Revert("FiatTokenV2: authorization is not yet valid")
        if not now < valid_before:
            raise Revert("FiatTokenV2: authorization is expired")
        if (frm.lower(), nonce) in self.used:
            raise Revert("FiatTokenV2: authorization is used or canceled")
        signable = encode_typed_data(_domain(self.name, self.version, self.chain_id, self.address), TYPES,
                                     _message(frm, to, value, valid_after, valid_before, nonce))
        if Account.recover_message(signable, vrs=(v, r, s)).lower() != frm.lower():
            raise Revert("FiatTokenV2: invalid signature")
        if self.balance(frm) < value:
            raise Revert("ERC20: transfer amount exceeds balance")

    def transfer(self, frm, to, value, *rest) -> str:
        self.check(frm, to, value, *rest)
        self.used.add((frm.lower(), rest[2]))
        self.balances[frm.lower()] = self.balance(frm) - value
        self.balances[to.lower()] = self.balance(to) + value
        tx = "0x" + secrets.token_hex(32)
        pad = "0x" + "0" * 24
        self.logs[tx] = {"address": self.address, "data": f"0x{value:064x}",
                         "topics": [ERC20_TRANSFER_EVENT_TOPIC, pad + frm[2:].lower(), pad + to[2:].lower()]}
        return tx


class FakeChainSigner:
    """The SDK's FacilitatorEvmSigner over FakeUsdc contracts; receipts can be made to time out."""

    def __init__(self, tokens: list[FakeUsdc]) -> None:
        self.tokens = {token.address.lower(): token for token in tokens}
        self.address = Account.create().address
        self.receipt_failures = 0

    def _token(self, address: str) -> FakeUsdc:
        if address.lower() not in self.tokens:
            raise Exception(f"no contract at {address} (multicall and the like are not simulated)")
        return self.tokens[address.lower()]

    def get_addresses(self) -> list[str]:
        return [self.address]

    def get_code(self, address: str) -> bytes:
        return b"\x60\x80" if address.lower() in self.tokens else b""

    def get_chain_id(self) -> int:
        return next(iter(self.tokens.values())).chain_id

    def get_balance(self, address: str, token_address: str) -> int:
        return self._token(token_address).balance(address)

    def read_contract(self, address: str, abi, function_name: str, *args):
        token = self._token(address)
        if function_name == "transferWithAuthorization":
            return token.check(*args)
        reads = {"name": lambda: token.name, "version": lambda: token.version,
                 "balanceOf": lambda: token.balance(args[0]),
                 "authorizationState": lambda: (args[0].lower(), args[1]) in token.used}
        return reads[function_name]()

    def write_contract(self, address: str, abi, function_name: str, *args, data_suffix=None) -> str:
        assert function_name == "transferWithAuthorization", function_name
        return self._token(address).transfer(*args)

    def send_transaction(self, to: str, data: bytes) -> str:
        raise Exception("no smart wallets here")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        if self.receipt_failures:
            self.receipt_failures -= 1
            raise TimeoutError(f"transaction {tx_hash} not mined within the wait")
        log = next(t.logs[tx_hash] for t in self.tokens.values() if tx_hash in t.logs)
        return TransactionReceipt(status=1, block_number=1, tx_hash=tx_hash, logs=[log])

    def verify_typed_data(self, address, domain, types, primary_type, message, signature) -> bool:
        raise Exception("not used by the exact EIP-3009 scheme")


class FacilitatorStandIn:
    """POST /verify and /settle on 127.0.0.1, with the next settles scriptable (see `script`)."""

    def __init__(self, networks: tuple[str, ...] = ("eip155:84532", "eip155:8453"), delay: float = 1.0) -> None:
        self.tokens = {network: FakeUsdc(network) for network in networks}
        self.chain = FakeChainSigner(list(self.tokens.values()))
        self.facilitator = register_exact_evm_facilitator(x402FacilitatorSync(), self.chain, list(networks))
        self.delay = delay  # how long a "timeout" hangs: longer than the client waits
        self.verify_status: int | None = None  # answer /verify with this status and no verdict
        self.scripted: list[str] = []
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FacilitatorStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, *modes: str) -> None:
        """The next settles go: "ok", "timeout_before" (hang, nothing moved), "timeout_after" (transfer,
        then hang), "pending" (transfer, receipt wait fails: HTTP 500 settlement_pending, CDP style),
        "drained" (the payer spent the funds before settlement: a definite failure)."""
        self.scripted.extend(modes)

    def fund(self, network: str, address: str, atomic: int) -> None:
        token = self.tokens[network]
        token.balances[address.lower()] = token.balance(address) + atomic

    def balance(self, network: str, address: str) -> int:
        return self.tokens[network].balance(address)

    def settles(self) -> int:
        return self.calls.count("settle")

    def _answer(self, path: str, body: dict) -> tuple[int, dict | None]:
        payload = parse_payment_payload(body["paymentPayload"])
        requirements = parse_payment_requirements(payload.x402_version, body["paymentRequirements"])
        with self._lock:
            self.calls.append(path.strip("/"))
            mode = self.scripted.pop(0) if path == "/settle" and self.scripted else "ok"
        if path == "/verify":
            if self.verify_status:
                return self.verify_status, {"error": "verify is down"}
            return 200, self.facilitator.verify(payload, requirements).model_dump(by_alias=True, exclude_none=True)
        return self._settle(mode, payload, requirements)

    def _settle(self, mode: str, payload, requirements) -> tuple[int, dict | None]:
        if mode == "timeout_before":
            time.sleep(self.delay)
            return 504, None
        if mode == "drained":
            auth = payload.payload["authorization"]
            self.tokens[requirements.network].balances[auth["from"].lower()] = 0
        if mode == "pending":
            self.chain.receipt_failures += 1
        answer = self.facilitator.settle(payload, requirements).model_dump(by_alias=True, exclude_none=True)
        if mode == "timeout_after":
            time.sleep(self.delay)
        return (500 if answer.get("errorReason") == "settlement_pending" else 200), answer

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, answer = standin._answer(self.path, body)
                data = json.dumps(answer).encode() if answer is not None else b""
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting: that was the point

        return Handler


class Wallet:
    """A payer: an eth-account key, paying through the SDK's client or signing by hand."""

    def __init__(self) -> None:
        self.account = Account.create()
        self.address = self.account.address
        self.client = x402ClientSync()
        self.client.register("eip155:*", ExactEvmClientScheme(EthAccountSigner(self.account)))
        self.client.set_spend_controls({"max_amount_per_payment": "$100000"})  # the default cap is $1

    def pay(self, required: PaymentRequired) -> str:
        """What an SDK client sends for a 402: the PAYMENT-SIGNATURE header."""
        return encode_payment_signature_header(self.client.create_payment_payload(required))

    def sign(self, required: PaymentRequired, *, value: int | None = None, valid_before: int | None = None,
             name: str | None = None, key=None, frm: str | None = None, version: int = 2) -> str:
        """A hand-made payload for the first accepted option, with one thing changed."""
        accepted = required.accepts[0]
        nonce = os.urandom(32)
        message = _message(frm or self.address, accepted.pay_to, value or int(accepted.amount), 0,
                           valid_before or int(time.time()) + accepted.max_timeout_seconds, nonce)
        domain = _domain(name or accepted.extra["name"], accepted.extra["version"],
                         int(accepted.network.split(":")[1]), accepted.asset)
        signed = (key or self.account).sign_typed_data(domain, TYPES, message)
        authorization = {k: str(v) for k, v in message.items() if k != "nonce"} | {"nonce": "0x" + nonce.hex()}
        inner = {"authorization": authorization, "signature": "0x" + signed.signature.hex().removeprefix("0x")}
        if version == 1:
            v1 = {"x402Version": 1, "scheme": "exact", "network": NETWORKS[accepted.network].v1_name,
                  "payload": inner}
            return encode_payment_signature_header(parse_payment_payload(v1))
        return encode_payment_signature_header(PaymentPayload(payload=inner, accepted=accepted,
                                                               resource=required.resource))
