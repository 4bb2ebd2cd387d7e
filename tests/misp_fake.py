"""A strict, in-process MISP test server for the PyMISP push path.

``MispFake`` listens on 127.0.0.1 only (a free port, in a background thread) and answers
the calls PyMISP 2.5 makes when it connects and when it pushes events:

* ``servers/getVersion[.json]``, ``users/view/me[.json]``, ``attributes/describeTypes.json``
  (PyMISP's own ``data/describeTypes.json``), so that ``PyMISP(url, key, ssl=False)`` constructs;
* ``events/add`` (POST), ``events/edit/<id|uuid>`` (POST, PUT), ``events/view/<id|uuid>``
  (GET, HEAD, POST), ``events/restSearch`` (POST, returnFormat json),
  ``events/publish/<id|uuid>`` (POST), ``tags/attachTagToObject`` (POST), and the
  CakePHP REST resource routes MISP maps for events (``GET|HEAD /events/<id>`` = view,
  ``POST|PUT /events/<id>`` = edit, ``POST /events`` = add).

The rules are MISP's (read from MISP's EventsController, Event, Attribute and
TagsController, and RestResponseComponent):

* every request needs ``Authorization: <key>`` (else 403 with MISP's authentication message)
  and must be a REST request (``Accept: application/json`` or a ``.json`` path, else 406);
* ``events/add`` with a UUID that already exists answers **404** with MISP's message and a
  ``Location`` header. Real MISP sends ``<baseurl>/events/<id>`` (``$this->baseurl . '/events/' .
  $add``), a REST resource route onto view/edit; that is the default here. ``location_style=
  "view"`` sends ``<baseurl>/events/view/<id>`` instead;
* an edit whose event ``timestamp`` is not newer than the stored one answers 403
  ``{"saved": false, "name": "Could not edit Event", "message": ..., "url": ..., "errors":
  "Event could not be saved: Event in the request not newer than the local copy."}``;
* distribution 4 needs a known ``sharing_group_id``: on add MISP answers 405
  ``Invalid Sharing Group or not authorised.``, on edit 403 with the ``_edit`` error text;
* an attribute (or object) UUID already used in another event, an unknown attribute type, a
  category that the type does not allow (describeTypes ``category_type_mappings``), a value
  that does not fit its type (see ``_value_error``), and anything the OpenAPI component schemas
  reject. MISP itself *drops* such attributes silently on events/add and events/edit (it logs
  them and still answers 200). By default (``invalid_attributes="reject"``) the fake answers
  403 ``Could not add Event``/``Could not edit Event`` with the reasons and stores nothing, so
  the tests see the error. ``invalid_attributes="drop"`` does what MISP does (200, attribute
  left out, the reason recorded in ``fake.dropped``);
* event and attribute bodies are validated with jsonschema against the component schemas of
  MISP's own OpenAPI document (``../shared/data/misp/openapi.yaml``), loaded once and fixed
  in memory: the duplicate ``text`` in ``AttributesRestSearchReturnFormat``'s enum is removed
  (the document then passes openapi-spec-validator) and ``AttributeType``'s enum, older than
  describeTypes, gets describeTypes' types added (see ``SPEC_FIXES``). Integers are checked as
  the digit strings MISP's PHP code treats them as.

Failure injection for reliability tests: ``fake.fail_next(n, mode, seconds=...)``, modes
``"500"``, ``"429"`` (``Retry-After: seconds``), ``"slow"`` (sleep ``seconds``, then handle the
request normally: it is applied even if the client has given up), ``"reset"`` (the next n
requests get their connection closed with a TCP reset, no answer) and ``"refuse"`` (stop listening at once:
connections are refused by the kernel until ``resume()`` or, with ``seconds``, until that time
has passed; refused attempts never reach the process, so they cannot be counted and ``n`` is
not used for this mode).

State can be inspected: ``fake.events`` (by UUID), ``fake.event(id_or_uuid)``,
``fake.requests`` (``RequestRecord``: method, path, status, whether it changed anything),
``fake.mutations``, ``fake.dropped``. Run ``python -m tests.misp_fake`` for a standalone
instance (for benchmark scripts).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import hashlib
import http.server
import ipaddress
import json
import os
import re
import secrets
import socket
import string
import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymisp
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

__all__ = ["SPEC_FIXES", "MispFake", "RequestRecord", "describe_types", "load_openapi"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
PYMISP_DATA = Path(pymisp.__file__).resolve().parent / "data"
AUTH_FAILED = (
    "Authentication failed. Please make sure you pass the API key of an API enabled user "
    "along in the Authorization header."
)
ALREADY_EXISTS = "Event already exists, if you would like to edit it, use the url in the location header."
NOT_NEWER = "Event could not be saved: Event in the request not newer than the local copy."
TYPE_MSG = "Options depend on the selected category."
CATEGORY_MSG = "Options : Payload delivery, Antivirus detection, Payload installation, Files dropped ..."
VALUE_MSG = 'Value not in the right type/format. Please double check the value or select type "other".'
UUID_MSG = "Please provide a valid RFC 4122 UUID"
NOT_UNIQUE = "The UUID provided is not unique"
SG_REQUIRED = 'If the distribution is set to "Sharing Group", a sharing group has to be selected.'
EVENT_DIST_MSG = (
    "Options : Your organisation only, This community only, Connected communities, All communities"
)
ATTRIBUTE_DIST_MSG = (
    "Options: Your organisation only, This community only, Connected communities, All communities, "
    "Sharing group, Inherit event"
)
EVENT_CHOICES = (
    ("threat_level_id", ("1", "2", "3", "4"), "Options : 1, 2, 3, 4 (for High, Medium, Low, Undefined)"),
    ("distribution", ("0", "1", "2", "3", "4"), EVENT_DIST_MSG),
    ("analysis", ("0", "1", "2"), "Options : 0, 1, 2 (for Initial, Ongoing, Completed)"),
)
EDIT_NO_SG = (
    "Event could not be saved: Sharing group chosen as the distribution level, but no sharing group "
    "specified. Make sure that the event includes a valid sharing_group_id or change to a different "
    "distribution level."
)
EDIT_BAD_SG = (
    "Event could not be saved: Invalid sharing group or you don't have access to that sharing group."
)
RECOVER_FIELDS = ("analysis", "threat_level_id", "info", "distribution", "date")
TIME_FILTERS = (
    ("timestamp", "timestamp"),
    ("publish_timestamp", "publish_timestamp"),
    ("last", "publish_timestamp"),
)
FAILURE_MODES = ("refuse", "500", "429", "slow", "reset")
# CakePHP's Validation::uuid().
UUID_RE = re.compile(
    r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-[0-5][a-fA-F0-9]{3}-[089aAbB][a-fA-F0-9]{3}-[a-fA-F0-9]{12}$"
)
EVENT_LISTS = ("Attribute", "Object", "Tag", "EventTag", "ShadowAttribute", "RelatedEvent")
EVENT_LISTS += ("Galaxy", "EventReport", "Org", "Orgc", "SharingGroup", "CryptographicKey")


# --------------------------------------------------------------------------------------
# Reference data: describeTypes, object templates, the OpenAPI document
# --------------------------------------------------------------------------------------


@functools.cache
def describe_types() -> dict[str, Any]:
    """PyMISP's shipped describeTypes (the ``result`` member)."""
    with open(PYMISP_DATA / "describeTypes.json", encoding="utf-8") as fh:
        return json.load(fh)["result"]


@functools.cache
def _object_template(name: str) -> dict[str, Any] | None:
    path = PYMISP_DATA / "misp-objects" / "objects" / name / "definition.json"
    if not path.is_file() or "/" in name or name.startswith("."):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _default_openapi_path() -> Path:
    candidates = []
    if os.environ.get("MELDPUNT_SHARED_DATA"):
        candidates.append(Path(os.environ["MELDPUNT_SHARED_DATA"]))
    candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    for candidate in candidates:
        path = candidate / "misp" / "openapi.yaml"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "MISP's openapi.yaml not found (looked in "
        + ", ".join(str(c / "misp") for c in candidates)
        + "); set MELDPUNT_SHARED_DATA or pass openapi_path="
    )


SPEC_FIXES: list[str] = []


@functools.cache
def load_openapi(path: str | None = None, check_spec: bool = True) -> dict[str, Any]:
    """MISP's OpenAPI document, fixed in memory (never on disk); the fixes go to SPEC_FIXES."""
    spec_path = Path(path) if path else _default_openapi_path()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(spec_path, encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=loader)
    fixes: list[str] = []

    def dedupe(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list):
                    unique = list(dict.fromkeys(value))
                    if len(unique) != len(value):
                        dups = sorted({v for v in value if value.count(v) > 1})
                        node[key] = unique
                        fixes.append(f"{where}: removed duplicate enum value(s) {dups}")
                else:
                    dedupe(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                dedupe(value, f"{where}[{i}]")

    dedupe(spec, "#")
    type_enum = spec["components"]["schemas"]["AttributeType"]["enum"]
    missing = [t for t in describe_types()["types"] if t not in type_enum]
    if missing:
        type_enum.extend(missing)
        fixes.append(
            f"#/components/schemas/AttributeType: added describeTypes types missing from the enum {missing}"
        )
    if check_spec:
        from openapi_spec_validator import validate as validate_spec

        validate_spec(spec)  # raises if the fixes were not enough
    SPEC_FIXES[:] = fixes
    return spec


class _Schemas:
    """jsonschema validators (OpenAPI 3.0 dialect: ``nullable``, formats) for component schemas."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._root = {"components": spec["components"]}
        self._cache: dict[str, Any] = {}

    def validator(self, name: str) -> Any:
        if name not in self._cache:
            schema = dict(self._root)
            schema["$ref"] = f"#/components/schemas/{name}"
            self._cache[name] = OAS30Validator(schema, format_checker=oas30_format_checker)
        return self._cache[name]

    def errors(self, name: str, instance: Any) -> _Errors:
        found = _Errors()
        for err in self.validator(name).iter_errors(_php_numbers(instance)):
            where = "/".join(str(p) for p in err.absolute_path) or "(body)"
            message = err.message if len(err.message) <= 300 else err.message[:297] + "..."
            found.add(where, f"schema {name}: {message}")
        return found


def _php_numbers(node: Any) -> Any:
    """Integers become digit strings, as MISP's PHP code treats them (bools stay)."""
    if isinstance(node, bool):
        return node
    if isinstance(node, int):
        return str(node)
    if isinstance(node, dict):
        return {k: _php_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_php_numbers(v) for v in node]
    return node


# --------------------------------------------------------------------------------------
# Value checks (a subset of MISP's AttributeValidationTool)
# --------------------------------------------------------------------------------------

HASH_LENGTHS = {
    "md5": 32,
    "imphash": 32,
    "ja3-fingerprint-md5": 32,
    "hassh-md5": 32,
    "hasshserver-md5": 32,
    "x509-fingerprint-md5": 32,
    "sha1": 40,
    "git-commit-id": 40,
    "x509-fingerprint-sha1": 40,
    "cdhash": 40,
    "sha224": 56,
    "sha512/224": 56,
    "sha3-224": 56,
    "sha256": 64,
    "authentihash": 64,
    "sha512/256": 64,
    "sha3-256": 64,
    "x509-fingerprint-sha256": 64,
    "sha384": 96,
    "sha3-384": 96,
    "sha512": 128,
    "sha3-512": 128,
}
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]*[a-z][a-z0-9-]*$", re.I
)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
MAC_RE = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$", re.I)


def _ip_ok(value: str) -> bool:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _port_ok(value: str) -> bool:
    return value.isdigit() and 1 <= int(value) <= 65535


def _host_ok(value: str) -> bool:
    return HOSTNAME_RE.fullmatch(value) is not None


def _pair_ok(first: Callable[[str], bool], second: Callable[[str], bool]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        head, sep, tail = value.rpartition("|")
        return bool(sep) and first(head) and second(tail)

    return check


def _parses(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            parse(value)
        except ValueError:
            return False
        return True

    return check


def _hash_ok(length: int) -> Callable[[str], bool]:
    return lambda value: re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", value) is not None


# type -> (check, what MISP's AttributeValidationTool-like message adds)
VALUE_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {}
for _type, _length in HASH_LENGTHS.items():
    VALUE_CHECKS[_type] = (_hash_ok(_length), f"Checksum has to be {_length} hexadecimal characters.")
    VALUE_CHECKS[f"filename|{_type}"] = (
        _pair_ok(bool, _hash_ok(_length)),
        f"Expected a filename|checksum of {_length} hexadecimal characters.",
    )
for _type in ("ip-src", "ip-dst"):
    VALUE_CHECKS[_type] = (_ip_ok, "IP address has an invalid format.")
    VALUE_CHECKS[f"{_type}|port"] = (_pair_ok(_ip_ok, _port_ok), "Expected an IP address|port.")
for _type in ("domain", "hostname"):
    VALUE_CHECKS[_type] = (_host_ok, "Domain name has an invalid format.")
for _type in ("email", "email-src", "email-dst", "target-email", "whois-registrant-email", "dns-soa-email"):
    VALUE_CHECKS[_type] = (
        lambda v: EMAIL_RE.fullmatch(v) is not None,
        "Email address has an invalid format.",
    )
for _type in ("counter", "integer", "size-in-bytes"):
    VALUE_CHECKS[_type] = (lambda v: re.fullmatch(r"-?\d+", v) is not None, "Expected an integer.")
VALUE_CHECKS.update(
    {
        "port": (_port_ok, "Port numbers have to be integers between 1 and 65535."),
        "hostname|port": (_pair_ok(_host_ok, _port_ok), "Expected a hostname|port."),
        "domain|ip": (_pair_ok(_host_ok, _ip_ok), "Expected a domain|IP address."),
        "AS": (lambda v: re.fullmatch(r"(?i)(AS)?\d+", v) is not None, "AS number has to be integer."),
        "float": (_parses(float), "Expected a floating point value."),
        "datetime": (
            _parses(lambda v: dt.datetime.fromisoformat(v.replace("Z", "+00:00"))),
            "Expected an ISO 8601 date and time.",
        ),
        "mac-address": (lambda v: MAC_RE.fullmatch(v) is not None, "MAC address has an invalid format."),
    }
)
VALUE_CHECKED_TYPES = sorted(VALUE_CHECKS)


def _value_error(attr_type: str, value: str) -> str | None:
    """An error message when ``value`` does not fit ``attr_type`` (types in VALUE_CHECKED_TYPES)."""
    check = VALUE_CHECKS.get(attr_type)
    if check is None or check[0](value):
        return None
    return f"{VALUE_MSG} {check[1]}"


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


class _HttpError(Exception):
    """A MISP error answer: CakePHP exception JSON or RestResponse::saveFailResponse."""

    def __init__(
        self,
        status: int,
        name: str,
        url: str,
        *,
        errors: Any = None,
        save_fail: bool = False,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        body: dict[str, Any] = {"name": name, "message": name, "url": url}
        if save_fail:
            body = {"saved": False, **body, "errors": errors}
        elif errors is not None:
            body["errors"] = errors
        body.update(extra or {})
        self.status, self.body, self.headers = status, body, headers or {}


def _save_fail(action: str, url: str, errors: Any, event_id: str | None = None) -> _HttpError:
    extra = {"id": event_id} if event_id else None
    return _HttpError(403, f"Could not {action} Event", url, errors=errors, save_fail=True, extra=extra)


class _Errors(dict[str, list[str]]):
    """Validation messages by field, as CakePHP's validationErrors."""

    def add(self, name: str, message: str) -> None:
        self.setdefault(name, []).append(message)

    def merge(self, other: dict[str, list[str]], prefix: str = "") -> None:
        for name, messages in other.items():
            self.setdefault(prefix + name, []).extend(messages)


def _date_ok(text: str) -> bool:
    try:
        return re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None and bool(dt.date.fromisoformat(text))
    except ValueError:
        return False


def _truthy(value: Any) -> bool:
    """PHP's notion of a true flag for the usual JSON spellings."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "null")
    return bool(value)


def _is_bool_like(value: Any) -> bool:
    return value in (True, False, 0, 1, "0", "1", "true", "false")


def _as_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


def _digits(value: Any) -> int | None:
    text = _as_str(value).strip()
    return int(text) if text.isdigit() else None


def _like(pattern: str, value: str) -> bool:
    """SQL LIKE (``%`` and ``_``), case-insensitive as MISP's MySQL collation."""
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern.strip())
    return re.fullmatch(regex, value, re.I | re.S) is not None


def _split_filter(value: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """MISP restSearch filter forms: scalar, list (OR), {"OR","AND","NOT"}, "!x" (NOT)."""
    ors: list[Any] = []
    ands: list[Any] = []
    nots: list[Any] = []
    if isinstance(value, dict):
        for key, items in value.items():
            items = items if isinstance(items, list) else [items]
            {"OR": ors, "AND": ands, "NOT": nots}.get(key.upper(), ors).extend(items)
    else:
        ors = list(value) if isinstance(value, list | tuple) else [value]
    for item in list(ors):
        if isinstance(item, str) and item.startswith("!"):
            ors.remove(item)
            nots.append(item[1:])
    return ors, ands, nots


def _tag_colour(name: str) -> str:
    return "#" + hashlib.sha1(name.encode()).hexdigest()[:6]


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it (refused connections never reach it)."""

    method: str
    path: str
    query: str
    status: int
    changed: bool
    injected: str | None = None
    body: Any = None
    at: float = field(default_factory=time.time)


_Result = tuple[int, dict[str, str], Any, bool]


@dataclass(frozen=True)
class _Call:
    method: str
    arg: str | None
    named: dict[str, str]
    body: Any
    path: str


@dataclass
class _Failure:
    mode: str
    remaining: int
    seconds: float


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: MispFake, port: int) -> None:
        self.fake = fake
        super().__init__((HOST, port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass
        finally:
            self.server.fake._track(self.connection, False)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        fake = self.server.fake
        if fake._take_reset():
            fake._log(self.command, self.path, 0, False, "reset", None)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.rfile.close()
            self.connection.close()
            return
        status, headers, body = fake._handle(self.command, self.path, self.headers, raw)
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve


class MispFake:
    """A strict MISP stand-in on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        key: str | None = None,
        org_name: str = "MELDPUNT-TEST",
        invalid_attributes: str = "reject",
        location_style: str = "misp",
        sharing_groups: dict[int, str] | None = None,
        check_object_templates: bool = True,
        default_distribution: str = "1",
        openapi_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        log_bodies: bool = True,
    ) -> None:
        if invalid_attributes not in ("reject", "drop"):
            raise ValueError("invalid_attributes must be 'reject' or 'drop'")
        if location_style not in ("misp", "view"):
            raise ValueError("location_style must be 'misp' or 'view'")
        alphabet = string.ascii_letters + string.digits
        self.key = key or "".join(secrets.choice(alphabet) for _ in range(40))
        self.org = {"id": "1", "name": org_name, "uuid": str(uuidlib.uuid4()), "local": True}
        self.email = "connector@" + re.sub(r"[^a-z0-9]+", "-", org_name.lower()) + ".test"
        self.invalid_attributes = invalid_attributes
        self.location_style = location_style
        self.check_object_templates = check_object_templates
        self.default_distribution = default_distribution
        self.log_bodies = log_bodies
        self._clock = clock
        if sharing_groups is None:
            sharing_groups = {1: "meldpunt-test-sharing-group"}
        self.sharing_groups = {
            str(sg_id): {"id": str(sg_id), "name": name, "uuid": str(uuidlib.uuid4()), "releasability": ""}
            for sg_id, name in sharing_groups.items()
        }
        self._spec = load_openapi(str(openapi_path) if openapi_path else None)
        self._schemas = _Schemas(self._spec)
        self._types = describe_types()
        pymisp_version = ".".join(pymisp.__version__.split(".")[:3])
        self.misp_version = pymisp_version
        self.pymisp_recommended_version = pymisp_version
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._conns: set[socket.socket] = set()
        self._timer: threading.Timer | None = None
        self._started = False
        self.reset()

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("MispFake is not started")
        return f"http://{HOST}:{self._port}"

    def start(self) -> MispFake:
        if self._started:
            return self
        self._listen(0)
        self._started = True
        return self

    def stop(self) -> None:
        self._started = False
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._close_listener()

    def __enter__(self) -> MispFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        server = _Server(self, port)
        self._server, self._port = server, server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # ---------------------------------------------------------------- failures

    def fail_next(self, n: int, mode: str, seconds: float | None = None) -> None:
        """Make the next ``n`` requests fail (see the module docstring for the modes)."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"mode must be one of {FAILURE_MODES}")
        if n < 1:
            raise ValueError("n must be at least 1")
        if mode == "refuse":
            if not self._started:
                raise RuntimeError("start() the fake before refusing connections")
            if self._server is not None:
                self._close_listener()
            if seconds is not None:
                self._timer = threading.Timer(seconds, self.resume)
                self._timer.daemon = True
                self._timer.start()
            return
        default = {"429": 1.0, "slow": 2.0}.get(mode, 0.0)
        with self._lock:
            self._failures.append(_Failure(mode, n, default if seconds is None else seconds))

    def resume(self) -> None:
        """Listen again (same port) after ``fail_next(..., "refuse")``."""
        if self._timer and threading.current_thread() is not self._timer:
            self._timer.cancel()
        self._timer = None
        if self._started and self._server is None:
            self._listen(self._port)

    @property
    def refusing(self) -> bool:
        return self._started and self._server is None

    def _take(self, modes: tuple[str, ...]) -> _Failure | None:
        with self._lock:
            if self._failures and self._failures[0].mode in modes:
                failure = self._failures[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.pop(0)
                return failure
        return None

    def _take_reset(self) -> bool:
        return self._take(("reset",)) is not None

    # ---------------------------------------------------------------- inspection

    def reset(self) -> None:
        """Forget all events, tags, requests and pending failures."""
        with getattr(self, "_lock", threading.RLock()):
            self._events: dict[int, dict[str, Any]] = {}
            self._by_uuid: dict[str, int] = {}
            self._attr_owner: dict[str, tuple[int, str]] = {}  # uuid -> (event id, object id)
            self._object_owner: dict[str, int] = {}
            self._tags: dict[str, dict[str, Any]] = {}
            self._ids = {"event": 0, "attribute": 0, "object": 0, "tag": 0, "reference": 0, "sighting": 0}
            self._sightings: list[dict[str, Any]] = []
            self._failures: list[_Failure] = []
            self.requests: list[RequestRecord] = []
            self.dropped: list[dict[str, Any]] = []

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """Stored events by UUID, in MISP's shape (the inner ``Event`` dict, a copy)."""
        with self._lock:
            return {ev["uuid"]: copy.deepcopy(ev) for ev in self._events.values()}

    def event(self, ref: str | int) -> dict[str, Any] | None:
        with self._lock:
            found = self._find(str(ref))
            return copy.deepcopy(found) if found else None

    @property
    def mutations(self) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.changed]

    def _log(
        self, method: str, path: str, status: int, changed: bool, injected: str | None, body: Any
    ) -> None:
        parts = urlsplit(path)
        record = RequestRecord(
            method, parts.path, parts.query, status, changed, injected, body if self.log_bodies else None
        )
        with self._lock:
            self.requests.append(record)

    # ---------------------------------------------------------------- request handling

    def _now(self) -> int:
        return int(self._clock())

    def _next(self, kind: str) -> str:
        self._ids[kind] += 1
        return str(self._ids[kind])

    def _handle(
        self, method: str, raw_path: str, headers: Any, raw: bytes
    ) -> tuple[int, dict[str, str], Any]:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        failure = self._take(("500", "429", "slow"))
        injected = failure.mode if failure else None
        if failure and failure.mode == "slow":
            time.sleep(failure.seconds)
        path = urlsplit(raw_path).path
        try:
            if failure and failure.mode == "500":
                raise _HttpError(500, "An Internal Error Has Occurred.", path)
            if failure and failure.mode == "429":
                retry = str(max(1, round(failure.seconds)))
                raise _HttpError(429, "Rate limit exceeded.", path, headers={"Retry-After": retry})
            if headers.get("Authorization", "").strip() != self.key:
                raise _HttpError(403, AUTH_FAILED, path)
            status, out_headers, out, changed = self._route(method, path, headers, body)
        except _HttpError as err:
            status, out_headers, out, changed = err.status, err.headers, err.body, False
        self._log(method, raw_path, status, changed, injected, body)
        return status, out_headers, out

    def _route(self, method: str, path: str, headers: Any, body: Any) -> _Result:
        segments = [unquote(s) for s in path.strip("/").split("/") if s]
        is_json_ext = bool(segments) and segments[-1].endswith(".json")
        if is_json_ext:
            segments[-1] = segments[-1][: -len(".json")]
        accept = [a.split(";")[0].strip() for a in headers.get("Accept", "").split(",")]
        if "application/json" not in accept and not is_json_ext:
            raise _HttpError(
                406,
                "MispFake only answers REST requests: send Accept: application/json (MISP treats "
                "other requests as browser requests).",
                path,
            )
        named = {k: v for k, _, v in (s.partition(":") for s in segments if ":" in s)}
        segments = [s for s in segments if ":" not in s]
        if segments[:1] == ["events"] and len(segments) == 2 and segments[1] not in _EVENT_ACTIONS:
            # Router::mapResources('events'): /events/<id> is view (GET/HEAD) and edit (POST/PUT).
            key, arg = ("events", ":id"), segments[1]
        else:
            key, arg = tuple(segments[:2]), (segments[2] if len(segments) > 2 else None)
        handlers = _ROUTES.get(key)
        if handlers is None:
            raise _HttpError(404, f"MispFake: no such endpoint {path}", path)
        handler = handlers.get(method)
        if handler is None or (key in _NEEDS_ARG and not arg):
            raise _HttpError(405, f"MispFake: {method} is not implemented for {path}", path)
        return getattr(self, handler)(_Call(method, arg, named, body, path))

    def _r_sharing_groups(self, call: _Call) -> _Result:
        """sharingGroups/index: the groups this user may use, in MISP's list shape."""
        groups = [
            {"SharingGroup": dict(group), "Organisation": dict(self.org)}
            for group in self.sharing_groups.values()
        ]
        return 200, {}, {"response": groups}, False

    def _r_version(self, call: _Call) -> _Result:
        return 200, {}, self._version(), False

    def _r_me(self, call: _Call) -> _Result:
        if call.arg != "me":
            raise _HttpError(405, f"MispFake: only users/view/me is implemented, not {call.path}", call.path)
        return 200, {}, self._me(), False

    def _r_describe(self, call: _Call) -> _Result:
        return 200, {}, {"result": copy.deepcopy(self._types)}, False

    def _r_add(self, call: _Call) -> _Result:
        return self._add(call.body, call.named, call.path)

    def _r_edit(self, call: _Call) -> _Result:
        return self._edit(str(call.arg), call.body, call.named, call.path)

    def _r_view(self, call: _Call) -> _Result:
        body = call.body if call.method == "POST" else None
        return self._view(str(call.arg), call.method, call.named, body, call.path)

    def _r_search(self, call: _Call) -> _Result:
        return self._rest_search(call.body, call.path)

    def _r_publish(self, call: _Call) -> _Result:
        return self._publish(str(call.arg), call.path)

    def _r_tag(self, call: _Call) -> _Result:
        return self._attach_tag(call.body, call.path)

    def _r_sighting_add(self, call: _Call) -> _Result:
        """sightings/add/<attribute id or UUID>: MISP answers 404 for an attribute it does not
        hold (or a deleted one) and refuses a type other than 0 (seen), 1 (false positive) and
        2 (expiration); the sighting is the key's organisation's."""
        body = call.body if isinstance(call.body, dict) else {}
        kind = _as_str(body.get("type", "0")) or "0"
        if kind not in ("0", "1", "2"):
            raise _HttpError(400, f"Invalid sighting type {kind!r}", call.path)
        with self._lock:
            found = self._attribute(str(call.arg))
            if found is None:
                raise _HttpError(404, "Invalid attribute", call.path)
            event, attribute = found
            when = body.get("timestamp")
            sighting = {
                "id": self._next("sighting"),
                "attribute_id": attribute["id"],
                "event_id": event["id"],
                "org_id": self.org["id"],
                "date_sighting": _as_str(when) if _digits(when) is not None else str(self._now()),
                "uuid": str(uuidlib.uuid4()),
                "source": _as_str(body.get("source")),
                "type": kind,
                "attribute_uuid": attribute["uuid"],
                "Organisation": {"id": self.org["id"], "uuid": self.org["uuid"], "name": self.org["name"]},
            }
            self._sightings.append(sighting)
        return 200, {}, {"Sighting": dict(sighting)}, True

    def _r_sighting_index(self, call: _Call) -> _Result:
        """sightings/index/<event id>: the event's sightings (OpenAPI getSightingsByEventId);
        404 for an event it does not hold. Given a UUID, as real MISP, it finds nothing."""
        with self._lock:
            event = self._events.get(int(call.arg)) if str(call.arg).isdigit() else None
            if event is None:
                raise _HttpError(404, "Invalid event", call.path)
            found = [dict(s) for s in self._sightings if s["event_id"] == event["id"]]
        return 200, {}, found, False

    def _attribute(self, ref: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(event, attribute) of a live attribute by its id or UUID."""
        for event in self._events.values():
            attributes = list(event["Attribute"]) + [a for o in event["Object"] for a in o["Attribute"]]
            for attribute in attributes:
                if not attribute["deleted"] and ref in (attribute["id"], attribute["uuid"]):
                    return event, attribute
        return None

    def add_sighting(self, attribute_uuid: str, kind: str = "0", when: int | None = None) -> dict[str, Any]:
        """A sighting as a recipient's analyst gives it in MISP's UI (not through the API)."""
        call = _Call(
            "POST", attribute_uuid, {}, {"type": kind, "timestamp": when}, f"sightings/add/{attribute_uuid}"
        )
        return dict(self._r_sighting_add(call)[2]["Sighting"])

    # ---------------------------------------------------------------- connection calls

    def _version(self) -> dict[str, Any]:
        return {
            "version": self.misp_version,
            "pymisp_recommended_version": self.pymisp_recommended_version,
            "perm_sync": False,
            "perm_sighting": True,
            "perm_galaxy_editor": False,
            "request_encoding": [],
            "filter_sightings": True,
        }

    def _me(self) -> dict[str, Any]:
        role_flags = dict.fromkeys(
            ("perm_add", "perm_modify", "perm_modify_org", "perm_publish", "perm_auth"), True
        )
        role_flags.update(dict.fromkeys(("perm_tagger", "perm_tag_editor", "perm_sighting"), True))
        role_flags.update(
            dict.fromkeys(
                ("perm_delegate", "perm_sync", "perm_admin", "perm_audit", "perm_site_admin"), False
            )
        )
        role_flags.update(
            dict.fromkeys(
                ("perm_regexp_access", "perm_template", "perm_sharing_group", "perm_galaxy_editor"),
                False,
            )
        )
        return {
            "User": {
                "id": "1",
                "org_id": self.org["id"],
                "email": self.email,
                "autoalert": False,
                "invited_by": "0",
                "gpgkey": None,
                "certif_public": "",
                "nids_sid": "4000000",
                "termsaccepted": True,
                "newsread": "0",
                "role_id": "4",
                "change_pw": False,
                "contactalert": False,
                "disabled": False,
                "expiration": None,
                "current_login": str(self._now()),
                "last_login": str(self._now()),
                "force_logout": False,
                "date_created": str(self._now()),
                "date_modified": str(self._now()),
            },
            "Role": {
                "id": "4",
                "name": "Publisher",
                **role_flags,
                "default_role": False,
                "restricted_to_site_admin": False,
                "enforce_rate_limit": False,
                "rate_limit_count": "0",
                "permission": "3",
                "permission_description": "publish",
            },
            "UserSetting": [],
            "Organisation": {
                "id": self.org["id"],
                "name": self.org["name"],
                "uuid": self.org["uuid"],
                "local": True,
            },
        }

    # ---------------------------------------------------------------- lookups

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self._events.get(int(ref))
        event_id = self._by_uuid.get(ref.lower())
        return self._events.get(event_id) if event_id else None

    def _render(
        self, event: dict[str, Any], *, metadata: bool = False, deleted: bool = False
    ) -> dict[str, Any]:
        out = copy.deepcopy(event)
        if not deleted:
            out["Attribute"] = [a for a in out["Attribute"] if not a["deleted"]]
            for obj in out["Object"]:
                obj["Attribute"] = [a for a in obj["Attribute"] if not a["deleted"]]
        if metadata:
            for key in ("Attribute", "Object", "ShadowAttribute", "EventReport", "RelatedEvent"):
                out.pop(key, None)
        if not out.get("Tag"):
            out.pop("Tag", None)
        return {"Event": out}

    # ---------------------------------------------------------------- events/view

    def _view(
        self, ref: str, method: str, named: dict[str, str], body: Any, path: str
    ) -> tuple[int, dict[str, str], Any, bool]:
        with self._lock:
            event = self._find(ref)
            if method == "HEAD":
                return (200 if event else 404), {}, None, False
            if event is None:
                raise _HttpError(404, "Invalid event", path)
            deleted = _truthy((body or {}).get("deleted")) if isinstance(body, dict) else False
            deleted = deleted or _truthy(named.get("deleted"))
            return 200, {}, self._render(event, deleted=deleted), False

    # ---------------------------------------------------------------- events/add

    @staticmethod
    def _unwrap(body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict) or not body:
            return None
        if isinstance(body.get("response"), dict | list):
            body = body["response"]
            if isinstance(body, list):
                body = body[0] if body else None
        if isinstance(body, dict) and isinstance(body.get("request"), dict):
            body = body["request"]
        if isinstance(body, dict) and isinstance(body.get("Event"), dict):
            body = body["Event"]
        return copy.deepcopy(body) if isinstance(body, dict) and body else None

    def _add(self, body: Any, named: dict[str, str], path: str) -> tuple[int, dict[str, str], Any, bool]:
        url = "/events/add"
        data = self._unwrap(body)
        if data is None:
            raise _HttpError(405, "No valid event data received.", path)
        with self._lock:
            data.setdefault("distribution", self.default_distribution)
            data.setdefault("analysis", "0")
            data.setdefault("threat_level_id", "4")
            data.setdefault("date", dt.date.fromtimestamp(self._clock()).isoformat())
            if _as_str(data["distribution"]) == "4":
                if _as_str(data.get("sharing_group_id")) not in self.sharing_groups:
                    raise _HttpError(405, "Invalid Sharing Group or not authorised.", path)
            else:
                data["sharing_group_id"] = "0"
            for key in ("orgc_id", "Orgc", "orgc", "org_id", "Org", "id"):
                data.pop(key, None)  # a non-sync user always creates for its own organisation
            has_content = data.get("Attribute") or data.get("Object") or data.get("EventReport")
            if _truthy(data.get("published")) and not has_content:
                err = {"Event": "Received a published event that was empty. Event add process blocked."}
                raise _save_fail("add", url, err)
            if isinstance(data.get("uuid"), str) and data["uuid"].lower() in self._by_uuid:
                existing = self._by_uuid[data["uuid"].lower()]
                where = f"/events/view/{existing}" if self.location_style == "view" else f"/events/{existing}"
                raise _HttpError(404, ALREADY_EXISTS, url, headers={"Location": self.url + where})
            errors = self._event_errors(data, creating=True)
            if errors:
                raise _save_fail("add", url, {"Event": errors})
            now = self._now()
            event_id = self._next("event")
            published = _truthy(data.get("published"))
            event: dict[str, Any] = {
                "id": event_id,
                "orgc_id": self.org["id"],
                "org_id": self.org["id"],
                "date": _as_str(data["date"]),
                "threat_level_id": _as_str(data["threat_level_id"]),
                "info": _as_str(data.get("info")).strip(),
                "published": published,
                "uuid": (data.get("uuid") or str(uuidlib.uuid4())).lower(),
                "attribute_count": "0",
                "analysis": _as_str(data["analysis"]),
                "timestamp": _as_str(data.get("timestamp") or now),
                "distribution": _as_str(data["distribution"]),
                "proposal_email_lock": False,
                "locked": _truthy(data.get("locked")),
                "publish_timestamp": str(now) if published else "0",
                "sighting_timestamp": "0",
                "sharing_group_id": _as_str(data.get("sharing_group_id") or "0"),
                "disable_correlation": _truthy(data.get("disable_correlation")),
                "extends_uuid": _as_str(data.get("extends_uuid")),
                "protected": None,
                "event_creator_email": self.email,
                "Org": self._org_ref(),
                "Orgc": self._org_ref(),
                "Attribute": [],
                "ShadowAttribute": [],
                "RelatedEvent": [],
                "Galaxy": [],
                "Object": [],
                "EventReport": [],
                "Tag": [],
            }
            errors, dropped = self._merge_content(event, data, creating=True)
            if errors and self.invalid_attributes == "reject":
                raise _save_fail("add", url, errors)
            self._commit(event, dropped)
            metadata = _truthy(named.get("metadata"))
            return 200, {}, self._render(event, metadata=metadata), True

    def _org_ref(self) -> dict[str, Any]:
        return {k: self.org[k] for k in ("id", "name", "uuid", "local")}

    def _event_errors(self, data: dict[str, Any], *, creating: bool) -> _Errors:
        """MISP's Event model validation plus the EventNoId schema."""
        errors = _Errors()
        for name, allowed, message in EVENT_CHOICES:
            if _as_str(data.get(name)) not in allowed:
                errors.add(name, message)
        info = data.get("info")
        if not isinstance(info, str) or not info.strip():
            errors.add("info", "Info cannot be empty.")
        if not _date_ok(_as_str(data.get("date"))):
            errors.add("date", "Expected date format: YYYY-MM-DD")
        if "published" in data and not _is_bool_like(data["published"]):
            errors.add("published", "boolean")
        if creating and "uuid" in data and not UUID_RE.fullmatch(_as_str(data["uuid"])):
            errors.add("uuid", UUID_MSG)
        if data.get("extends_uuid") and not UUID_RE.fullmatch(_as_str(data["extends_uuid"])):
            errors.add("extends_uuid", "Please provide a valid UUID")
        if _as_str(data.get("distribution")) == "4" and not _as_str(data.get("sharing_group_id")).strip("0"):
            errors.add("sharing_group_id", SG_REQUIRED)
        plain = {k: v for k, v in data.items() if k not in EVENT_LISTS}
        errors.merge(self._schemas.errors("EventNoId", plain))
        self._tags_errors(errors, data.get("Tag"))
        return errors

    def _tags_errors(self, errors: _Errors, tags: Any) -> None:
        for i, tag in enumerate(tags or []):
            errors.merge(self._tag_errors(tag), prefix=f"Tag/{i}/")

    def _tag_errors(self, tag: Any) -> _Errors:
        if isinstance(tag, str):
            tag = {"name": tag}
        if not isinstance(tag, dict):
            return _Errors({"(body)": ["a tag must be an object with a name"]})
        errors = self._schemas.errors("Tag", tag)
        if not _as_str(tag.get("name")).strip():
            errors.add("name", "Name cannot be empty.")
        return errors

    # ---------------------------------------------------------------- attributes & objects

    def _merge_content(
        self, event: dict[str, Any], data: dict[str, Any], *, creating: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Apply Attribute/Object/Tag lists of a request to ``event`` (in place, uncommitted).

        Returns (errors by kind, dropped entries). Invalid attributes/objects are left out.
        """
        now = self._now()
        ctx = _Ctx(event=event, now=now, creating=creating)
        for tag in data.get("Tag") or []:
            self._attach(event["Tag"], tag)
        seen_values: set[tuple[str, str, str]] = set()
        for index, attr in enumerate(data.get("Attribute") or []):
            if creating and isinstance(attr, dict):
                # Event::_add skips value|type|category duplicates of the same request silently.
                key = (_as_str(attr.get("value")), _as_str(attr.get("type")), _as_str(attr.get("category")))
                if key in seen_values:
                    ctx.drop(
                        "Attribute",
                        index,
                        attr,
                        {"value": ["duplicate value|type|category in the request: MISP skips it silently"]},
                        error=False,
                    )
                    continue
                seen_values.add(key)
            self._merge_attribute(ctx, event["Attribute"], attr, index, object_id="0", template=None)
        for index, obj in enumerate(data.get("Object") or []):
            self._merge_object(ctx, obj, index)
        event["attribute_count"] = str(sum(1 for a in self._all_attributes(event) if not a["deleted"]))
        return ctx.errors, ctx.dropped

    @staticmethod
    def _all_attributes(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from event["Attribute"]
        for obj in event["Object"]:
            yield from obj["Attribute"]

    def _merge_attribute(
        self,
        ctx: _Ctx,
        target: list[dict[str, Any]],
        attr: Any,
        index: int | str,
        *,
        object_id: str,
        template: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        kind = "Attribute" if object_id == "0" and template is None else "Object attribute"
        if not isinstance(attr, dict):
            ctx.drop(kind, index, attr, {"(body)": ["an attribute must be a JSON object"]})
            return None
        attr = copy.deepcopy(attr)
        attr_uuid = _as_str(attr.get("uuid")).lower() or None
        existing = None
        if attr_uuid:
            existing = next((a for a in target if a["uuid"] == attr_uuid), None)
            owner = self._attr_owner.get(attr_uuid)
            elsewhere = (owner is not None and owner != (int(ctx.event["id"]), object_id)) or (
                existing is None and attr_uuid in ctx.new_uuids
            )
            if elsewhere:
                where = (
                    f"event {owner[0]}"
                    if owner and owner[0] != int(ctx.event["id"])
                    else "another place in this event"
                )
                ctx.drop(
                    kind,
                    index,
                    attr,
                    {"uuid": [f"{NOT_UNIQUE}: it is already used by an attribute in {where}"]},
                )
                return None
        if existing is not None:
            ts = _digits(attr.get("timestamp"))
            if attr.get("timestamp") not in (None, "") and (ts is None or ts <= int(existing["timestamp"])):
                return existing  # MISP: "nothing to change", silently
            merged = {
                **existing,
                **{k: v for k, v in attr.items() if k not in ("id", "event_id", "object_id")},
            }
            merged.setdefault("timestamp", ctx.now)
            if attr.get("timestamp") in (None, ""):
                merged["timestamp"] = ctx.now
            candidate = merged
        else:
            candidate = attr
        errors = self._attribute_errors(candidate, template, creating=existing is None)
        if errors:
            ctx.drop(kind, index, attr, errors)
            return None
        stored = self._store_attribute(candidate, ctx, object_id, existing)
        if existing is None:
            target.append(stored)
            ctx.new_uuids.add(stored["uuid"])
        else:
            target[target.index(existing)] = stored
        return stored

    def _attribute_errors(
        self, attr: dict[str, Any], template: dict[str, Any] | None, *, creating: bool
    ) -> _Errors:
        """MISP's Attribute model validation, the template check and the Attribute schema."""
        errors = _Errors()
        self._type_category_value_errors(attr, errors)
        if creating and attr.get("uuid") is not None and not UUID_RE.fullmatch(_as_str(attr["uuid"])):
            errors.add("uuid", UUID_MSG)
        distribution = _as_str(attr.get("distribution", "5"))
        if distribution not in ("0", "1", "2", "3", "4", "5"):
            errors.add("distribution", ATTRIBUTE_DIST_MSG)
        elif distribution == "4" and _as_str(attr.get("sharing_group_id")) not in self.sharing_groups:
            errors.add("sharing_group_id", SG_REQUIRED)
        if "to_ids" in attr and not _is_bool_like(attr["to_ids"]):
            errors.add("to_ids", "boolean")
        if template is not None:
            self._template_errors(attr, template, errors)
        body = {
            k: v for k, v in attr.items() if k not in ("Tag", "Galaxy", "ShadowAttribute", "AttributeTag")
        }
        errors.merge(self._schemas.errors("Attribute", body))
        self._tags_errors(errors, attr.get("Tag"))
        return errors

    def _type_category_value_errors(self, attr: dict[str, Any], errors: _Errors) -> None:
        types = self._types
        attr_type = _as_str(attr.get("type"))
        known = attr_type in types["types"]
        if not known:
            errors.add("type", f"{TYPE_MSG} Unknown attribute type {attr_type!r} (not in describeTypes).")
        elif not attr.get("category"):
            attr["category"] = types["sane_defaults"][attr_type]["default_category"]
        category = _as_str(attr.get("category"))
        if category not in types["categories"]:
            errors.add("category", f"{CATEGORY_MSG} Unknown category {category!r}.")
        elif known and attr_type not in types["category_type_mappings"][category]:
            errors.add("type", f"{TYPE_MSG} Type {attr_type!r} is not allowed in category {category!r}.")
        value = attr.get("value")
        text = (
            "" if isinstance(value, bool) or not isinstance(value, str | int | float) else str(value).strip()
        )
        problem = _value_error(attr_type, text) if text else "Value cannot be empty."
        if problem:
            errors.add("value", problem)

    def _template_errors(self, attr: dict[str, Any], template: dict[str, Any], errors: _Errors) -> None:
        relation = _as_str(attr.get("object_relation"))
        spec = template["attributes"].get(relation)
        name = template["name"]
        if not relation:
            errors.add("object_relation", "An object attribute needs an object_relation.")
        elif not self.check_object_templates:
            return
        elif spec is None:
            errors.add(
                "object_relation", f"{relation!r} is not an attribute of the {name!r} object template."
            )
        elif spec["misp-attribute"] != _as_str(attr.get("type")):
            errors.add(
                "type", f"The {name!r} template gives {relation!r} the type {spec['misp-attribute']!r}."
            )

    def _store_attribute(
        self, attr: dict[str, Any], ctx: _Ctx, object_id: str, existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        attr_type = _as_str(attr["type"])
        to_ids = attr.get("to_ids")
        stored = {
            "id": existing["id"] if existing else self._next("attribute"),
            "type": attr_type,
            "category": _as_str(attr["category"]),
            "to_ids": _truthy(to_ids)
            if to_ids is not None
            else bool(self._types["sane_defaults"][attr_type]["to_ids"]),
            "uuid": (_as_str(attr.get("uuid")) or str(uuidlib.uuid4())).lower(),
            "event_id": ctx.event["id"],
            "distribution": _as_str(attr.get("distribution", "5")),
            "timestamp": _as_str(attr.get("timestamp") or ctx.now),
            "comment": _as_str(attr.get("comment")),
            "sharing_group_id": _as_str(attr.get("sharing_group_id") or "0")
            if _as_str(attr.get("distribution")) == "4"
            else "0",
            "deleted": _truthy(attr.get("deleted")),
            "disable_correlation": _truthy(attr.get("disable_correlation")),
            "object_id": object_id,
            "object_relation": attr.get("object_relation")
            if object_id != "0" or attr.get("object_relation")
            else None,
            "first_seen": attr.get("first_seen"),
            "last_seen": attr.get("last_seen"),
            "value": str(attr["value"]).strip(),
            "Galaxy": [],
            "ShadowAttribute": [],
            "Tag": list(existing.get("Tag", [])) if existing else [],
        }
        for tag in attr.get("Tag") or []:
            self._attach(stored["Tag"], tag)
        if not stored["Tag"]:
            del stored["Tag"]
        return stored

    def _merge_object(self, ctx: _Ctx, obj: Any, index: int) -> None:
        if not isinstance(obj, dict):
            ctx.drop("Object", index, obj, {"(body)": ["an object must be a JSON object"]})
            return
        obj = copy.deepcopy(obj["Object"] if isinstance(obj.get("Object"), dict) else obj)
        obj_uuid = _as_str(obj.get("uuid")).lower()
        existing = next((o for o in ctx.event["Object"] if obj_uuid and o["uuid"] == obj_uuid), None)
        name = _as_str(obj.get("name")).strip()
        template = _object_template(name) if name else None
        errors = self._object_errors(ctx, obj, existing, template)
        if existing is not None and obj.get("timestamp") not in (None, ""):
            stamp = _digits(obj.get("timestamp"))
            if stamp is None or stamp <= int(existing["timestamp"]):
                return  # MISP: the stored object is as new: nothing to change
        if errors:
            ctx.drop("Object", index, obj, errors)
            return
        stored = self._object_record(ctx, obj, existing, template)
        dropped_before = len(ctx.dropped)
        for a_index, attr in enumerate(obj.get("Attribute") or []):
            self._merge_attribute(
                ctx,
                stored["Attribute"],
                attr,
                f"{index}/{a_index}",
                object_id=stored["id"],
                template=template or {"name": name, "attributes": {}},
            )
        if template is not None and self.check_object_templates and len(ctx.dropped) == dropped_before:
            problems = self._template_conformity(template, stored["Attribute"])
            if problems:
                ctx.drop("Object", index, obj, {"Attribute": problems})
                return
        self._object_references(ctx, obj, stored)
        if existing is None:
            ctx.event["Object"].append(stored)
            ctx.new_uuids.add(stored["uuid"])
        else:
            ctx.event["Object"][ctx.event["Object"].index(existing)] = stored

    def _object_errors(
        self, ctx: _Ctx, obj: dict[str, Any], existing: dict[str, Any] | None, template: dict[str, Any] | None
    ) -> _Errors:
        errors = _Errors()
        obj_uuid = _as_str(obj.get("uuid")).lower()
        event_id = int(ctx.event["id"])
        owner = self._object_owner.get(obj_uuid, event_id)
        if obj_uuid and existing is None and (owner != event_id or obj_uuid in ctx.new_uuids):
            errors.add("uuid", f"{NOT_UNIQUE}: the object UUID is already used in event {owner}")
        if obj_uuid and not UUID_RE.fullmatch(obj_uuid):
            errors.add("uuid", UUID_MSG)
        name = _as_str(obj.get("name")).strip()
        if not name:
            errors.add("name", "Name cannot be empty.")
        elif template is None and self.check_object_templates:
            errors.add("name", f"No MISP object template named {name!r} (PyMISP's misp-objects).")
        template_uuid = _as_str(obj.get("template_uuid")).lower()
        if template and self.check_object_templates and template_uuid and template_uuid != template["uuid"]:
            errors.add("template_uuid", f"The {name!r} template's uuid is {template['uuid']}.")
        distribution = _as_str(obj.get("distribution", "5"))
        if distribution == "4" and _as_str(obj.get("sharing_group_id")) not in self.sharing_groups:
            errors.add("sharing_group_id", SG_REQUIRED)
        body = {k: v for k, v in obj.items() if k not in ("Attribute", "ObjectReference")}
        errors.merge(self._schemas.errors("Object", body))
        return errors

    def _object_record(
        self, ctx: _Ctx, obj: dict[str, Any], existing: dict[str, Any] | None, template: dict[str, Any] | None
    ) -> dict[str, Any]:
        if existing is not None:
            stored = copy.deepcopy(existing)
            for key in ("comment", "distribution", "first_seen", "last_seen"):
                if key in obj:
                    stored[key] = obj[key]
            if "deleted" in obj:
                stored["deleted"] = _truthy(obj["deleted"])
            stored["timestamp"] = _as_str(obj.get("timestamp") or ctx.now)
            return stored
        defaults = template or {}
        distribution = _as_str(obj.get("distribution", "5"))
        return {
            "id": self._next("object"),
            "name": _as_str(obj.get("name")).strip(),
            "meta-category": _as_str(obj.get("meta-category") or defaults.get("meta-category")),
            "description": _as_str(obj.get("description") or defaults.get("description")),
            "template_uuid": _as_str(obj.get("template_uuid") or defaults.get("uuid")),
            "template_version": _as_str(obj.get("template_version") or defaults.get("version")),
            "event_id": ctx.event["id"],
            "uuid": _as_str(obj.get("uuid")).lower() or str(uuidlib.uuid4()),
            "timestamp": _as_str(obj.get("timestamp") or ctx.now),
            "distribution": distribution,
            "sharing_group_id": _as_str(obj.get("sharing_group_id") or "0") if distribution == "4" else "0",
            "comment": _as_str(obj.get("comment")),
            "deleted": _truthy(obj.get("deleted")),
            "first_seen": obj.get("first_seen"),
            "last_seen": obj.get("last_seen"),
            "ObjectReference": [],
            "Attribute": [],
        }

    def _object_references(self, ctx: _Ctx, obj: dict[str, Any], stored: dict[str, Any]) -> None:
        for ref in obj.get("ObjectReference") or []:
            if not isinstance(ref, dict) or not ref.get("referenced_uuid"):
                continue
            stored["ObjectReference"].append(
                {
                    "id": self._next("reference"),
                    "uuid": _as_str(ref.get("uuid")) or str(uuidlib.uuid4()),
                    "timestamp": _as_str(ref.get("timestamp") or ctx.now),
                    "object_id": stored["id"],
                    "event_id": ctx.event["id"],
                    "source_uuid": stored["uuid"],
                    "referenced_uuid": _as_str(ref["referenced_uuid"]).lower(),
                    "relationship_type": _as_str(ref.get("relationship_type")),
                    "comment": _as_str(ref.get("comment")),
                    "deleted": False,
                }
            )

    @staticmethod
    def _template_conformity(template: dict[str, Any], attributes: list[dict[str, Any]]) -> list[str]:
        relations = [a["object_relation"] for a in attributes if not a["deleted"]]
        problems = []
        for relation in template.get("required", []):
            if relation not in relations:
                problems.append(f"the {template['name']!r} template requires {relation!r}")
        one_of = template.get("requiredOneOf", [])
        if one_of and not any(r in relations for r in one_of):
            problems.append(f"the {template['name']!r} template requires one of {one_of}")
        for relation in set(relations):
            spec = template["attributes"].get(relation, {})
            if relations.count(relation) > 1 and not spec.get("multiple"):
                problems.append(f"{relation!r} may appear only once in a {template['name']!r} object")
        return problems

    def _attach(self, tags: list[dict[str, Any]], tag: Any, local: bool | None = None) -> bool:
        """Attach a tag (created if unknown, as a tag editor may); False when already there."""
        if isinstance(tag, str):
            tag = {"name": tag}
        name = _as_str(tag.get("name")).strip()
        is_local = bool(local) if local is not None else _truthy(tag.get("local"))
        known = self._tags.get(name.lower())
        if known is None:
            known = {
                "id": self._next("tag"),
                "name": name,
                "colour": _as_str(tag.get("colour")) or _tag_colour(name),
                "exportable": True,
                "user_id": "0",
                "hide_tag": False,
                "numerical_value": None,
                "is_galaxy": name.startswith("misp-galaxy:"),
                "is_custom_galaxy": False,
                "local_only": False,
            }
            self._tags[name.lower()] = known
        if any(t["id"] == known["id"] and t["local"] == int(is_local) for t in tags):
            return False
        tags.append({**known, "local": int(is_local), "relationship_type": tag.get("relationship_type")})
        return True

    def _commit(self, event: dict[str, Any], dropped: list[dict[str, Any]]) -> None:
        event_id = int(event["id"])
        self._events[event_id] = event
        self._by_uuid[event["uuid"]] = event_id
        for attr in event["Attribute"]:
            self._attr_owner[attr["uuid"]] = (event_id, "0")
        for obj in event["Object"]:
            self._object_owner[obj["uuid"]] = event_id
            for attr in obj["Attribute"]:
                self._attr_owner[attr["uuid"]] = (event_id, obj["id"])
        for entry in dropped:
            self.dropped.append({"event_id": event["id"], "event_uuid": event["uuid"], **entry})

    # ---------------------------------------------------------------- events/edit

    def _edit(self, ref: str, body: Any, named: dict[str, str], path: str) -> _Result:
        with self._lock:
            found = self._find(ref)
            if found is None:
                raise _HttpError(404, "Invalid event", path)
            url = f"/events/edit/{found['id']}"
            data = self._unwrap(body)
            if data is None:
                raise _save_fail(
                    "edit", url, "Event could not be saved: no event data in the request.", found["id"]
                )
            target = self._edit_target(found, data, url)
            self._edit_preconditions(data, target, url)
            errors = self._event_errors(data, creating=False)
            if errors:
                raise _save_fail("edit", url, errors, target["id"])
            now = self._now()
            event = copy.deepcopy(target)
            meaningful = self._apply_event_fields(event, data, now)
            content_before = copy.deepcopy({k: event[k] for k in ("Attribute", "Object", "Tag")})
            errors, dropped = self._merge_content(event, data, creating=False)
            if errors and self.invalid_attributes == "reject":
                raise _save_fail("edit", url, errors, target["id"])
            meaningful = meaningful or content_before != {k: event[k] for k in ("Attribute", "Object", "Tag")}
            # Event::_edit: an edit without `published` unpublishes; a meaningful edit of a
            # published event publishes again.
            event["published"] = _truthy(data.get("published"))
            if event["published"] and meaningful:
                event["publish_timestamp"] = str(now)
            changed = event != target
            self._commit(event, dropped)
            return 200, {}, self._render(event, metadata=_truthy(named.get("metadata"))), changed

    def _edit_target(self, found: dict[str, Any], data: dict[str, Any], url: str) -> dict[str, Any]:
        """Event::_edit looks the event up by the body's uuid when there is one."""
        if not data.get("uuid"):
            return found
        body_uuid = _as_str(data["uuid"])
        target = self._find(body_uuid.lower()) if UUID_RE.fullmatch(body_uuid) else None
        if target is None:
            raise _save_fail(
                "edit", url, "Event could not be saved: Could not find the local event.", found["id"]
            )
        return target

    def _edit_preconditions(self, data: dict[str, Any], target: dict[str, Any], url: str) -> None:
        event_id = target["id"]
        if data.get("timestamp") not in (None, ""):
            stamp = _digits(data["timestamp"])
            if stamp is None or stamp <= int(target["timestamp"]):
                raise _save_fail("edit", url, NOT_NEWER, event_id)
        if _as_str(data.get("distribution")) == "4":
            if data.get("sharing_group_id") in (None, ""):
                raise _save_fail("edit", url, EDIT_NO_SG, event_id)
            if _as_str(data["sharing_group_id"]) not in self.sharing_groups:
                raise _save_fail("edit", url, EDIT_BAD_SG, event_id)
        for name in RECOVER_FIELDS:
            data.setdefault(name, target[name])
        if _as_str(data["distribution"]) != "4":
            data["sharing_group_id"] = data.get("sharing_group_id") or "0"

    @staticmethod
    def _apply_event_fields(event: dict[str, Any], data: dict[str, Any], now: int) -> bool:
        """Copy the editable event fields; True when a recovered field really changed."""
        meaningful = any(_as_str(data[name]) != _as_str(event[name]) for name in RECOVER_FIELDS)
        for name in RECOVER_FIELDS:
            event[name] = _as_str(data[name]).strip() if name == "info" else _as_str(data[name])
        if event["distribution"] == "4":
            event["sharing_group_id"] = _as_str(data.get("sharing_group_id") or "0")
        else:
            event["sharing_group_id"] = "0"
        if "disable_correlation" in data:
            event["disable_correlation"] = _truthy(data["disable_correlation"])
        if "extends_uuid" in data:
            event["extends_uuid"] = _as_str(data["extends_uuid"])
        stamp = data.get("timestamp")
        event["timestamp"] = _as_str(stamp) if stamp not in (None, "") else str(now)
        return meaningful

    # ---------------------------------------------------------------- events/publish

    def _publish(self, ref: str, path: str) -> tuple[int, dict[str, str], Any, bool]:
        with self._lock:
            event = self._find(ref)
            if event is None:
                if ref.isdigit():
                    raise _HttpError(405, "You do not have the permission to do that.", path)
                raise _HttpError(404, "Invalid event", path)
            event["published"] = True
            event["publish_timestamp"] = str(self._now())
            body = {
                "name": "Publish",
                "message": "Event published without alerts",
                "url": f"{self.url}/events/alert/{event['id']}",
                "id": event["id"],
            }
            return 200, {}, body, True

    # ---------------------------------------------------------------- tags/attachTagToObject

    def _attach_tag(self, body: Any, path: str) -> _Result:
        url = "/tags/attachTagToObject"
        if not isinstance(body, dict) or not body.get("uuid"):
            raise _HttpError(405, "Invalid object uuid", path)
        target_uuid = _as_str(body["uuid"])
        if not UUID_RE.fullmatch(target_uuid):
            # MISP throws InvalidArgumentException: CakePHP renders it as a 500.
            raise _HttpError(500, "An Internal Error Has Occurred.", path)
        tags = body.get("tag")
        if tags in (None, "", []):
            raise _HttpError(405, "Invalid tag", path)
        local = _truthy(body.get("local"))
        with self._lock:
            object_type, event, target = self._tag_target(target_uuid.lower(), path)
            fails = []
            for tag in tags if isinstance(tags, list) else [tags]:
                reason = self._attach_one(tag, object_type, event, target, local)
                if reason:
                    fails.append(reason)
            successes = len(tags if isinstance(tags, list) else [tags]) - len(fails)
            if successes:
                message = f"Successfully attached {successes} tags to {object_type} ({target['id']})"
                if fails:
                    message += "\n" + self._fail_message(fails)
                result = {"saved": True, "success": True, "name": message, "message": message, "url": url}
                return 200, {}, result, True
            raise _HttpError(
                403, "Could not attachTagToObject Tag", url, errors=self._fail_message(fails), save_fail=True
            )

    def _tag_target(self, target_uuid: str, path: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """TagsController::__findObjectByUuid: an event, else an attribute (objects are no target)."""
        event = self._find(target_uuid)
        if event is not None:
            return "Event", event, event
        owner = self._attr_owner.get(target_uuid)
        if owner is None:
            raise _HttpError(405, "Invalid Target.", path)
        event = self._events[owner[0]]
        return "Attribute", event, next(a for a in self._all_attributes(event) if a["uuid"] == target_uuid)

    def _attach_one(
        self, tag: Any, object_type: str, event: dict[str, Any], target: dict[str, Any], local: bool
    ) -> str | None:
        if isinstance(tag, int) or (isinstance(tag, str) and tag.isdigit()):
            known = next((t for t in self._tags.values() if t["id"] == str(tag)), None)
            if known is None:
                return "Invalid Tag."
            tag = known["name"]
        name = _as_str(tag).strip()
        if not name or len(name) > 255:
            return f"Unable to create tag. Reason: {json.dumps({'name': ['Invalid tag name']})}"
        target.setdefault("Tag", [])
        if not self._attach(target["Tag"], {"name": name}, local=local):
            return f"{object_type} already has the requested tag attached, no changes had to be made."
        now = str(self._now())
        target["timestamp"] = now
        if not local:  # a global tag unpublishes the event
            event["published"] = False
            event["timestamp"] = now
        return None

    @staticmethod
    def _fail_message(fails: list[str]) -> str:
        reasons = json.dumps(dict(enumerate(fails)))
        return f"Failed to attach {len(fails)} tags. Reasons: {reasons}"

    # ---------------------------------------------------------------- events/restSearch

    def _rest_search(self, body: Any, path: str) -> tuple[int, dict[str, str], Any, bool]:
        query = body if isinstance(body, dict) else {}
        if isinstance(query.get("request"), dict):
            query = query["request"]
        return_format = _as_str(query.get("returnFormat") or "json")
        if return_format != "json":
            raise _HttpError(
                501, f"MispFake: returnFormat {return_format!r} is not implemented (json only)", path
            )
        unsupported = sorted(k for k, v in query.items() if k not in _SEARCH_KEYS and _truthy_filter(v))
        if unsupported:
            raise _HttpError(501, f"MispFake: restSearch filter(s) not implemented: {unsupported}", path)
        now = self._now()
        with self._lock:
            found = [ev for _, ev in sorted(self._events.items()) if self._matches(ev, query, now, path)]
            limit = _digits(query.get("limit"))
            if limit:
                page = _digits(query.get("page")) or 1
                found = found[(page - 1) * limit : page * limit]
            metadata = _truthy(query.get("metadata"))
            deleted = _truthy(query.get("deleted"))
            return (
                200,
                {},
                {"response": [self._render(ev, metadata=metadata, deleted=deleted) for ev in found]},
                False,
            )

    def _matches(self, event: dict[str, Any], query: dict[str, Any], now: int, path: str) -> bool:
        present = {k: v for k, v in query.items() if v not in (None, "", [], {})}
        for key, hit in self._event_filters(event).items():
            if key in present and not _filter_ok(present[key], hit):
                return False
        for key, stored in TIME_FILTERS:
            if key in present:
                low, high = _time_range(present[key], now, path)
                value = int(event[stored])
                if (low is not None and value < low) or (high is not None and value > high):
                    return False
        wanted = query.get("published")
        if wanted not in (None, "", 2, "2"):
            allowed = [_truthy(w) for w in wanted] if isinstance(wanted, list) else [_truthy(wanted)]
            if event["published"] not in allowed:
                return False
        attr_filters = {k: present[k] for k in ("value", "type", "category") if k in present}
        if query.get("to_ids") not in (None, ""):
            attr_filters["to_ids"] = query["to_ids"]
        if not attr_filters:
            return True
        deleted = _truthy(query.get("deleted"))
        candidates = [a for a in self._all_attributes(event) if deleted or not a["deleted"]]
        return any(_attribute_matches(a, attr_filters) for a in candidates)

    def _event_filters(self, event: dict[str, Any]) -> dict[str, Callable[[str], bool]]:
        """Event-level restSearch filters: name -> does one filter term match this event."""
        uuids = {event["uuid"]} | {a["uuid"] for a in self._all_attributes(event)}
        event_tags = [t["name"] for t in event.get("Tag", [])]
        all_tags = event_tags + [t["name"] for a in self._all_attributes(event) for t in a.get("Tag", [])]
        org = event["Orgc"]
        return {
            # set_filter_uuid: the event's uuid or the uuid of one of its attributes
            "uuid": lambda term: term.lower() in uuids,
            "eventid": lambda term: term.lower() in (event["id"], event["uuid"]),
            "eventinfo": lambda term: _like(term, event["info"]),
            "tags": lambda term: any(_like(term, name) for name in all_tags),
            "event_tags": lambda term: any(_like(term, name) for name in event_tags),
            "org": lambda term: term == org["id"] or term.lower() == org["uuid"] or _like(term, org["name"]),
        }


class _Ctx:
    """One add/edit in progress: collected errors and dropped entries."""

    def __init__(self, *, event: dict[str, Any], now: int, creating: bool) -> None:
        self.event, self.now, self.creating = event, now, creating
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.dropped: list[dict[str, Any]] = []
        self.new_uuids: set[str] = set()

    def drop(
        self, kind: str, index: int | str, item: Any, errors: dict[str, list[str]], *, error: bool = True
    ) -> None:
        entry = {
            "kind": kind,
            "index": index,
            "uuid": item.get("uuid") if isinstance(item, dict) else None,
            "value": item.get("value", item.get("name")) if isinstance(item, dict) else None,
            "errors": errors,
        }
        if error:
            self.errors.setdefault(kind, []).append(entry)
        self.dropped.append(entry)


def _truthy_filter(value: Any) -> bool:
    return value not in (None, "", 0, "0", False, [], {})


def _filter_ok(value: Any, hit: Callable[[str], bool]) -> bool:
    """OR terms: one must hit; AND terms: all must hit; NOT terms: none may hit."""
    ors, ands, nots = _split_filter(value)
    if ors and not any(hit(_as_str(term)) for term in ors):
        return False
    return all(hit(_as_str(term)) for term in ands) and not any(hit(_as_str(term)) for term in nots)


def _attribute_matches(attr: dict[str, Any], filters: dict[str, Any]) -> bool:
    for key, wanted in filters.items():
        if key == "to_ids":
            ok = attr["to_ids"] == _truthy(wanted)
        elif key == "value":
            ok = _filter_ok(wanted, lambda term: _like(term, attr["value"]))
        else:
            ok = _filter_ok(wanted, lambda term, key=key: attr[key] == term)
        if not ok:
            return False
    return True


def _time_value(value: Any, now: int, path: str) -> int | None:
    """MISP's timestamp filter values: epoch (int/float/digits) or a relative 1d/12h/30m/10s."""
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = _as_str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text))
    match = re.fullmatch(r"(\d+)([dhms])", text)
    if match:
        seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}[match.group(2)]
        return now - int(match.group(1)) * seconds
    raise _HttpError(501, f"MispFake: timestamp filter value {value!r} is not understood", path)


def _time_range(value: Any, now: int, path: str) -> tuple[int | None, int | None]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise _HttpError(501, "MispFake: a timestamp range has two members", path)
        return _time_value(value[0], now, path), _time_value(value[1], now, path)
    return _time_value(value, now, path), None


_EVENT_ACTIONS = {"add", "edit", "view", "restSearch", "publish", "index", "delete", "unpublish", "alert"}
_READ = ("GET", "HEAD")
_ROUTES: dict[tuple[str, ...], dict[str, str]] = {
    ("servers", "getVersion"): dict.fromkeys(_READ, "_r_version"),
    ("users", "view"): dict.fromkeys(_READ, "_r_me"),
    ("attributes", "describeTypes"): dict.fromkeys(_READ, "_r_describe"),
    ("events",): {"POST": "_r_add"},
    ("events", "add"): {"POST": "_r_add"},
    ("events", ":id"): {**dict.fromkeys(_READ, "_r_view"), "POST": "_r_edit", "PUT": "_r_edit"},
    ("events", "edit"): {"POST": "_r_edit", "PUT": "_r_edit"},
    ("events", "view"): {**dict.fromkeys(_READ, "_r_view"), "POST": "_r_view"},
    ("events", "restSearch"): {"POST": "_r_search"},
    ("events", "publish"): {"POST": "_r_publish", "PUT": "_r_publish"},
    ("tags", "attachTagToObject"): {"POST": "_r_tag"},
    ("sharingGroups", "index"): dict.fromkeys(_READ, "_r_sharing_groups"),
    ("sightings", "add"): {"POST": "_r_sighting_add"},
    ("sightings", "index"): dict.fromkeys(_READ, "_r_sighting_index"),
}
_NEEDS_ARG = {
    ("users", "view"),
    ("events", ":id"),
    ("events", "edit"),
    ("events", "view"),
    ("events", "publish"),
    ("sightings", "add"),
    ("sightings", "index"),
}
_SEARCH_KEYS = {
    "returnFormat",
    "uuid",
    "eventid",
    "eventinfo",
    "tags",
    "event_tags",
    "timestamp",
    "publish_timestamp",
    "last",
    "org",
    "published",
    "value",
    "type",
    "category",
    "to_ids",
    "limit",
    "page",
    "metadata",
    "deleted",
}


def main(argv: list[str] | None = None) -> None:
    """Run a standalone fake (for benchmark scripts): prints ``url key`` and serves until ^C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", default=None)
    parser.add_argument("--invalid-attributes", choices=("reject", "drop"), default="reject")
    args = parser.parse_args(argv)
    fake = MispFake(key=args.key, invalid_attributes=args.invalid_attributes).start()
    print(fake.url, fake.key, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
