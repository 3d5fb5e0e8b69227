"""Passwords that never show: in reprs, error messages, logs or audit entries.

A PostgreSQL password has to reach libpq as a plain string, so it cannot be
hidden from code that asks for it on purpose (``str(value)``); what is hidden
here is every *accidental* view of it:

- :class:`Password` and :class:`Conninfo` are ``str`` subclasses whose ``repr``
  (what ``print(some_dict)``, logging of containers, debuggers and error
  reporters that capture local variables show) hides the password, while
  ``str()`` still gives psycopg and libpq the real value;
- :func:`hide_passwords` takes the password out of any text that quotes a
  connection string (URL or keyword form), for error messages and audit entries;
- :func:`read_owner_only` reads any secret file that only its owner may read
  (the key ring, the audit key, a token, a password: :func:`read_password_file`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from safereplay.domain.errors import ConfigurationError

__all__ = [
    "HIDDEN",
    "Conninfo",
    "Password",
    "file_problem",
    "hide_passwords",
    "read_owner_only",
    "read_password_file",
]

#: What a hidden secret looks like (pydantic's SecretStr shows the same).
HIDDEN = "**********"

# postgresql://user:PASSWORD@host... — the password runs to the last '@' before the
# host part (an '@' inside a password should be written %40, but is hidden anyway).
# The scheme is at most 32 characters: unbounded, every start in a long run of letters
# (a hostile reason or parameter, redacted for the audit trail) scanned to the run's
# end and back, quadratic (10,000 letters took a second, 20,000 six).
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.\-]{0,31}://[^:/@\s]*:)(?P<secret>[^\s/?#]*)@", re.I
)
# password=VALUE or password='VAL UE' in keyword conninfos, and ?password=VALUE in URLs.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I
)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every connection string in it replaced by ``HIDDEN``.

    Works on text that is not a valid connection string too (an error message,
    a half-typed DSN), since that is where a password is most likely to leak.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{HIDDEN}@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{HIDDEN}", text)


class Password(str):
    """A password for libpq: ``str()`` is the password, ``repr()`` is ``'**********'``.

    eventsourcing keeps the password it connects with in its pool's ``kwargs``
    dictionary; as a ``Password`` it prints hidden there too.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(HIDDEN)


class Conninfo(str):
    """A libpq connection string whose ``repr()`` hides the password (``str()`` does not)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(hide_passwords(str(self)))


def read_owner_only(
    path: Path,
    *,
    what: str,
    error: Callable[[str], Exception],
    check_permissions: bool = True,
) -> str:
    """The text of a secret file that only its owner may read (mode 0600 or stricter).

    For every file safereplay reads a secret from (the key ring, the audit key,
    a token, a database password). The mode is checked *before* the file is read:
    a secret that others can read is refused rather than used. ``what`` names the
    file in messages ("key file"), which never quote its content; ``error`` makes
    the exception each caller's package raises.
    """
    shown = f"{what} {str(path)!r}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{shown} does not exist (it cannot be read)") from None
    except OSError as exc:
        raise error(f"{shown} cannot be read: {exc.strerror}") from None
    if check_permissions and os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{shown} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{shown} cannot be read: {type(exc).__name__}") from None


def read_password_file(path: Path, *, variable: str) -> str:
    """The password held in ``path``, which only its owner may read (mode 0600).

    The file holds the password alone; one trailing line break is allowed (as
    written by ``echo`` or by container secret mounts). ``variable`` is the
    setting that names the file, for the error messages, which never quote the
    file's content.
    """
    shown = f"{variable}: password file {str(path)!r}"
    text = read_owner_only(path, what=f"{variable}: password file", error=ConfigurationError)
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigurationError(f"{shown} is empty")
    if "\n" in password or "\r" in password:
        raise ConfigurationError(
            f"{shown} holds more than one line: it must hold the password alone (a libpq "
            "password file, host:port:database:user:password lines, goes in PGPASSFILE)"
        )
    return password


def file_problem(path: Path, *, owner_only: bool) -> str | None:
    """What stops ``path`` from being used as a certificate or key file, or None.

    Said after the setting's name ("'x.key' does not exist"); the file is opened,
    never read into a message. ``owner_only``: a key that group or others may read
    is refused, as the secret files read by :func:`read_owner_only` are.
    """
    shown = repr(str(path))
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return f"{shown} is not a file"
        with path.open("rb"):
            pass
    except FileNotFoundError:
        return f"{shown} does not exist"
    except OSError as exc:
        return f"{shown} cannot be read: {exc.strerror or type(exc).__name__}"
    if owner_only and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{shown} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    return None
