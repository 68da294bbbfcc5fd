"""What a DSN says, and what of it may be shown: never any part that could hold a password.

A DSN reaches riskd from ``--dsn``, ``RISKD_DSN``, ``DATABASE_URL``, ``RISKD_DATABASE_DSN`` or
``[database] dsn``, and a broken one must be refused with one line that says what is wrong
without echoing it. libpq's own messages quote the DSN, or a piece of it, whole (``missing "="
after "mysql://u:pw@host/db"``), and a password holding an unescaped ``@`` or ``/`` is silently
split by libpq into a host name, a port or a database name, which a connection error then
prints. So :func:`dsn_problem` checks a DSN the way libpq reads it, refuses those ambiguous
forms too, and words every problem itself; :func:`mask_dsn` shows a DSN that passes with its
secrets replaced by ``***``, and masks anything else conservatively: from the user name (or,
after any other scheme, the scheme) to the last ``@``, and from a password keyword to the end.
"""

from __future__ import annotations

import difflib
import functools
import re
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

URI_PREFIXES = ("postgresql://", "postgres://")  # libpq's, case-sensitive
# keywords whose value is a secret (libpq 18 knows all of them; older ones refuse the last three)
SECRET_KEYWORDS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)
MASK = "***"

_SPACE = " \t\n\v\f\r"  # C isspace(), as libpq reads a connection string
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# how a broken key=value string may still name a password: misspelt too
_LOOSE_SECRET = re.compile(r"(?i)(?:ssl)?pass(?:word|wd|w)?|pasword|pwd|\w*secret\w*|scram_\w*_key")
# a keyword of broken key=value text, and the "=" after it if there is one
_LOOSE_PAIR = re.compile(
    r"(?:^|(?<=[" + _SPACE + r"]))([^" + _SPACE + r"=]+)[" + _SPACE + r"]*(=)?"
)
_PORT = re.compile(r"[" + _SPACE + r"]*[0-9]*[" + _SPACE + r"]*")

# libpq's parse errors (English), worded again without the text they quote
_LIBPQ_PROBLEMS = (
    ('missing "=" after', 'expected key=value pairs such as "host=db dbname=trading" (quote a '
     "value that holds a space: 'a b') or a postgresql:// URL"),
    ("unterminated quoted string", "a quoted value has no closing quote"),
    ('looking for matching "]"', 'an IPv6 address has no closing "]"'),
    ("IPv6 host address may not be empty", 'an empty IPv6 address "[]"'),
    ("unexpected character", 'unexpected character after an IPv6 address (expected ":" or "/")'),
    ("invalid percent-encoded token", 'a "%" not followed by two hex digits (write "%" as %25)'),
    ("forbidden value %00", '"%00" (a NUL byte) is not allowed'),
    ("unexpected spaces", "a space in a URL must be written %20"),
    ("key/value separator", "a query parameter that is not one key=value"),
)  # fmt: skip
_UNKNOWN_OPTION = re.compile(r"invalid (?:connection option|URI query parameter):? \"(.*)\"", re.S)


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with ``dsn``, in words that quote none of it; None when libpq reads it as
    written (no ``@`` or ``/`` of a password taken for a separator)."""
    if "\x00" in dsn:
        return "contains a NUL byte"
    try:
        dsn.encode()
    except UnicodeError:
        return "is not valid text (UTF-8)"
    problem = _url_problem(dsn)
    if problem is not None:
        return problem
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        return _libpq_problem(str(exc))
    except (ValueError, TypeError):
        return "cannot be read as a connection string"
    for port in str(params.get("port") or "").split(","):
        if not _PORT.fullmatch(port):
            hint = ' (in a URL, write a "/" in a password as %2F)' if _is_url(dsn) else ""
            return f"a port that is not a number{hint}"
    return None


def _is_url(dsn: str) -> bool:
    return dsn.startswith(URI_PREFIXES)


def _url_problem(dsn: str) -> str | None:
    """A URL libpq would not take for one, or would split in the wrong places."""
    stripped = dsn.lstrip(_SPACE)
    scheme = _SCHEME.match(stripped)
    if scheme is None:
        return None  # key=value pairs, or nothing libpq can read (it says so)
    if not stripped.startswith(URI_PREFIXES):
        name = scheme.group()[:-1]
        after = stripped[scheme.end() :]
        if name.lower() in ("postgresql", "postgres"):
            if not after.startswith("//"):
                return f'a URL must start with "{name.lower()}://" (two slashes)'
            return f'the URL scheme must be written in lower case: "{name.lower()}://"'
        if after.startswith("//") and len(name) <= 30:  # a scheme is never a password
            return f'scheme "{name}" is not postgresql:// or postgres://'
        return 'expected a postgresql:// URL or key=value pairs such as "host=db dbname=trading"'
    if stripped != dsn:
        return "white space before the URL"
    rest = dsn[dsn.index("//") + 2 :]
    head, slash, tail = rest.partition("/")
    if head.count("@") > 1:
        return '"@" more than once before the host (write an "@" in a user name or password as %40)'
    if "@" in head and _reads_like_a_password_parameter(head.partition("@")[0]):
        # `//host:1?password=@secret`: libpq reads a user, a password and a host "secret",
        # which it would then look up (and psycopg would log) by name
        return (
            'a password parameter before an "@": libpq would read what follows the "@" as the '
            'host (write an "@" in a password as %40)'
        )
    if slash and "@" in tail.partition("?")[0]:
        return (
            '"@" after the first "/" (write "/" as %2F and "@" as %40 in a user name or password)'
        )
    return None


def _libpq_problem(message: str) -> str:
    for fragment, problem in _LIBPQ_PROBLEMS:
        if fragment in message:
            return problem
    unknown = _UNKNOWN_OPTION.search(message)
    if unknown is not None:
        what = "query parameter" if "URI" in message else "connection option"
        if what == "query parameter" and unknown.group(1) == "schema":
            # Prisma's DATABASE_URL carries ?schema=…, which libpq does not know
            return (
                'an unknown query parameter: Prisma\'s "schema" (riskd reads its tables from'
                " [schema]; give riskd the URL without it, e.g. in RISKD_DSN)"
            )
        # the suggestion is a keyword libpq knows; the name as written is never shown (the tail
        # of an unquoted password with a space in it reads as an option name)
        guess = difflib.get_close_matches(unknown.group(1), _keywords(), n=1)
        return f"an unknown {what}" + (f' (did you mean "{guess[0]}"?)' if guess else "")
    return "cannot be read as a connection string"


def _keywords() -> list[str]:
    return sorted(_safe_keywords() | SECRET_KEYWORDS)


# --- masking ---------------------------------------------------------------------------------


def mask_dsn(dsn: str) -> str:
    """``dsn`` with every secret replaced by ``***``, for logs, errors and ``riskd status``.

    A DSN :func:`dsn_problem` passes loses exactly its secrets (the URL's password, and the
    values of the password keywords); any other text is masked conservatively, since where its
    password ends cannot be known.
    """
    if dsn_problem(dsn) is None:
        return _mask_url(dsn) if _is_url(dsn) else _mask_pairs(dsn)
    return _mask_loosely(dsn)


def _mask_url(dsn: str) -> str:
    """As libpq splits a URL: user info up to the first "@" before any "/", the password after
    its first ":"; query parameters split on "&", their names percent-decoded."""
    start = dsn.index("//") + 2
    stop = len(dsn)
    for i in range(start, len(dsn)):
        if dsn[i] in "@/":
            stop = i
            break
    out = dsn
    after = start
    if stop < len(dsn) and dsn[stop] == "@":
        after = stop + 1
        colon = dsn.find(":", start, stop)
        user = dsn[start : colon if colon >= 0 else stop]
        if _reads_like_a_password_parameter(dsn[start:stop]):
            # `//host:1?password=@secret`: libpq reads a user, a password and a host; a reader
            # reads a password parameter running past the "@", to the end maybe: nothing shown
            return dsn[:start] + MASK
        if any(c in user for c in "?&="):
            # user info that reads like parameters (`//[?password=x@`): libpq takes it whole as
            # the user name, a reader as a password; shown to neither
            out = dsn[:start] + MASK + dsn[stop:]
            after = start + len(MASK) + 1
        elif colon >= 0:
            out = dsn[: colon + 1] + MASK + dsn[stop:]
            after = colon + 1 + len(MASK) + 1
    query = out.find("?", after)
    if query < 0:
        return out
    params = out[query + 1 :].split("&")
    for n, param in enumerate(params):
        name, eq, _ = param.partition("=")
        if eq and unquote(name) in SECRET_KEYWORDS:
            params[n] = f"{name}={MASK}"
    return out[: query + 1] + "&".join(params)


def _reads_like_a_password_parameter(userinfo: str) -> bool:
    """Whether user info holds what a reader takes for a query string with a secret in it."""
    query = userinfo.find("?")
    if query < 0:
        return False
    for param in userinfo[query + 1 :].split("&"):
        name, eq, _ = param.partition("=")
        if eq and unquote(name) in SECRET_KEYWORDS:
            return True
    return False


def _mask_pairs(dsn: str) -> str:
    """As libpq reads key=value pairs (conninfo_parse in fe-connect.c): blanks around "=",
    a value quoted in '…' or bare up to a blank, a backslash escaping the next character."""
    out: list[str] = []
    i, n, kept = 0, len(dsn), 0
    while True:
        while i < n and dsn[i] in _SPACE:
            i += 1
        if i >= n:
            break
        begin = i
        while i < n and dsn[i] != "=" and dsn[i] not in _SPACE:
            i += 1
        keyword = dsn[begin:i]
        while i < n and dsn[i] in _SPACE:
            i += 1
        i += 1  # the "=" (dsn_problem passed: it is there)
        while i < n and dsn[i] in _SPACE:
            i += 1
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                i += 2 if dsn[i] == "\\" else 1
            i += 1
        else:
            while i < n and dsn[i] not in _SPACE:
                i += 2 if dsn[i] == "\\" else 1
        i = min(i, n)
        if keyword in SECRET_KEYWORDS:
            out.append(dsn[kept:begin] + f"{keyword}={MASK}")
            kept = i
    return "".join(out) + dsn[kept:]


def _mask_loosely(dsn: str) -> str:
    """Text that is no valid DSN: whatever could be a password goes. A URL's user info loses
    all after the user name up to the last "@"; from the first password keyword, or the first
    keyword libpq does not know (a misspelt "passwrod"), everything goes to the end. Both are
    found in the text as given: a password may hold a "?", an "=" or an "@"."""
    stripped = dsn.lstrip(_SPACE)
    scheme = _SCHEME.match(stripped)
    cut, tail = _loose_cut(dsn, url=scheme is not None)
    at = dsn.rfind("@")
    if at < 0:
        return dsn[:cut] + tail
    offset = len(dsn) - len(stripped)
    if scheme is not None and not stripped.startswith(URI_PREFIXES):
        # "postgresql:/u:pw@h", "u:pw@h", "u://pw@h": the "scheme" may be the user name, and
        # its colon the password's
        start = offset + scheme.end()
    else:
        after = offset + (scheme.end() if scheme is not None else 0)
        while after < at and dsn[after] == "/":
            after += 1
        colon = dsn.find(":", after, at)
        start = colon + 1 if colon >= 0 else at
    if start >= min(at, cut):
        return dsn[:cut] + tail
    if cut < at:
        return dsn[:start] + MASK
    return dsn[:start] + MASK + dsn[at:cut] + tail


def _loose_cut(dsn: str, *, url: bool) -> tuple[int, str]:
    """Where masking to the end starts, and what stands for the rest: the value of the first
    query parameter (URL) or keyword (key=value text) that is a secret or that libpq does not
    know; (len(dsn), "") when there is none."""
    if url:
        query = dsn.find("?")
        if query >= 0:
            offset = query + 1
            for param in dsn[query + 1 :].split("&"):
                name, eq, _ = param.partition("=")
                if eq and unquote(name) not in _safe_keywords():
                    return offset + len(name) + 1, MASK
                offset += len(param) + 1
        return len(dsn), ""
    for pair in _LOOSE_PAIR.finditer(dsn):
        keyword = pair.group(1)
        if _LOOSE_SECRET.fullmatch(keyword) or (pair.group(2) and keyword not in _safe_keywords()):
            return pair.end(1), f"={MASK}"
    return len(dsn), ""


@functools.cache
def _safe_keywords() -> frozenset[str]:
    """The keywords libpq knows whose values are no secret."""
    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    return frozenset(known - SECRET_KEYWORDS)
