"""Error text safe to store: every secret the endpoint was configured with is cut out.

A server's error message goes into the `error` column of every row it failed, and into logs.
Gateways echo what they got (a header, the URL, the body), so the text may hold the key. The
secrets of an endpoint are the key read from its `api_key_env`, the credentials inside its URL
(`https://user:KEY@host`, both parts, as written and percent-decoded), and the values of its
`request_extras` that kdist.config does not show in a saved config (a gateway's `x_key`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from kdist.config import HIDDEN, SHOWN_REQUEST_EXTRAS

# How much of an error's text is kept: the reason and the first words of the server's message.
ERROR_CHARS = 200
# Shorter strings are not taken as secrets: cutting every "a" or "1" out of a message would
# make it unreadable, and nothing that short is a credential.
_MIN_SECRET_CHARS = 4


def url_credentials(url: str) -> list[str]:
    """The user and password parts of a URL, as written and percent-decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [part for part in (parts.username, parts.password) if part]
    return found + [unquote(part) for part in found]


def without_credentials(url: str) -> str:
    """The URL to name in messages: `https://***@host/...` when it carries credentials."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return parts._replace(netloc=f"{HIDDEN}@{parts.netloc.rsplit('@', 1)[1]}").geturl()


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: a key that contains another secret is removed whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)

    @classmethod
    def for_endpoint(cls, url: str, api_key: str | None, request_extras: dict[str, Any]) -> Scrubber:
        hidden_extras = [str(v) for k, v in request_extras.items() if k not in SHOWN_REQUEST_EXTRAS and isinstance(v, str | int)]
        return cls([*(api_key and [api_key] or []), *url_credentials(url), *hidden_extras])

    def __call__(self, text: str, limit: int = ERROR_CHARS) -> str:
        """`text` without any secret, cut to `limit` characters (scrubbed first, so a cut
        never leaves the start of a key behind)."""
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return text if len(text) <= limit else text[: limit - 3] + "..."
