"""PostgreSQL URLs, shared by the team queue and the PostgreSQL label store: checking one,
hiding its password in any text, and connecting with errors that never show it."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Secret", "is_url", "redact"]

#: The environment variable a bare ``"postgresql://"`` (or ``url=None``) reads.
ENV = "DAL_POSTGRES_URL"


def is_url(value: Any) -> bool:
    """Whether ``value`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def redact(text: str) -> str:
    """``text`` with the password of any connection URL or ``password=`` setting in it hidden."""
    text = re.sub(r"([a-z][\w+.-]*://[^:/@\s]*:)[^@\s]*@", r"\1***@", text, flags=re.I)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _secrets(url: str) -> set[str]:
    """The password of ``url`` as written and decoded (empty when it has none)."""
    try:
        raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        return set()
    return {v for v in (raw, unquote(raw)) if v}


class Secret:
    """A checked PostgreSQL URL that shows itself only with its password hidden.

    ``url`` None, or a bare ``"postgresql://"``, reads :data:`ENV` when it is set (a bare URL
    otherwise means libpq's defaults: ``PGHOST``, ``PGUSER``, ``PGPASSWORD``, ...).
    """

    def __init__(self, url: Any, param: str, where: str) -> None:
        if url is None or url in ("postgresql://", "postgres://"):
            url = os.environ.get(ENV) or url
            if url is None:
                raise ValueError(f"{where} needs a PostgreSQL URL: pass {param}= or set {ENV}.")
        if not is_url(url):
            # Never the value itself: whatever it is, it may hold a password.
            scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else None
            shown = f"a {scheme}:// URL" if scheme else f"a {type(url).__name__}"
            raise ValueError(
                f"The {param!r} parameter of {where} must be a 'postgresql://...' URL. "
                f"Got {shown} instead."
            )
        self.url: str = url
        self.param, self.where = param, where
        self._secrets = _secrets(url)

    def hide(self, text: str) -> str:
        """``text`` with this URL's password hidden, however it was spelled (the exact
        strings first, longest first: a password may hold an ``@`` the pattern stops at)."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return redact(text)

    def __repr__(self) -> str:
        return self.hide(self.url)

    __str__ = __repr__

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg connection; ConnectionError (server unreachable, bad credentials) or
        ValueError (a URL libpq cannot parse), the password hidden in both."""
        import psycopg

        try:
            return psycopg.connect(self.url, connect_timeout=5, **kwargs)
        except psycopg.OperationalError as exc:
            raise ConnectionError(
                f"{self.where} could not connect to {self}: {self.hide(str(exc)).strip()}"
            ) from None
        except psycopg.Error:  # a URL libpq cannot parse: its text may quote the password
            raise ValueError(
                f"The {self.param!r} parameter of {self.where} must be a valid PostgreSQL URL. "
                f"Got {self} instead, which libpq cannot parse."
            ) from None
