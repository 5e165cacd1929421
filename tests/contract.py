"""The HTTP contract (`../shared/spec/API.md`, beside the checkout) as the tests read it."""
import re
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "API.md"
# Sections of the contract not built yet, each an open issue (none: issue 17's endpoints are served; auto top-up,
# the autoTopUp part of .../billing/settings, is built beside them). tests/api/test_authorization_matrix.py checks
# that none of their endpoints is served, so whoever builds one must take its section off this list.
NOT_YET_SERVED: tuple[str, ...] = ()
ENDPOINT = re.compile(r"`((?:GET|POST|PUT|PATCH|DELETE) /[^`?\s]*)")


def _sections() -> dict[str, str]:
    """The contract's text under each `## ` heading (the part before the first heading under "")."""
    parts = re.split(r"^## (.+)$", SPEC.read_text(), flags=re.M) if SPEC.exists() else [""]
    return {"": parts[0]} | dict(zip(parts[1::2], parts[2::2]))


def endpoints(*, served: bool = True) -> list[str]:
    """`METHOD /path` of every endpoint the contract names: those that must be served, or (served=False)
    those of the sections not built yet. Empty where the contract is not beside the checkout."""
    chosen = [text for title, text in _sections().items() if (title.strip() in NOT_YET_SERVED) != served]
    return [found for text in chosen for found in ENDPOINT.findall(text)]
