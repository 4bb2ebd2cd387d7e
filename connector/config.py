"""The deployment configuration: one YAML file, validated once on load, then passed in.

Validation is deliberately strict: a clearinghouse that starts with a typo in a constituency
either leaves an organisation uninformed or sends its weaknesses to somebody else. Every
problem found is reported (not only the first), each naming the key and what is wrong, and
nothing starts until the file is right.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from connector.normalize import mapped_ipv4_network
from connector.publicsuffix import is_public_suffix
from connector.recipients_csv import read_recipient_rows
from connector.rsit import check_category
from connector.tlp import TLP_LEVELS, Tlp
from connector.yamlfile import YamlFileError, load_yaml

DEFAULT_CONFIG_PATH = Path("config/meldpunt.yaml")
CONFIG_ENV = "MELDPUNT_CONFIG"
DATABASE_ENV = "MELDPUNT_DATABASE_URL"
DEFAULT_DATABASE = "sqlite:///meldpunt.db"

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"configuration {self.source} is not valid:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """A duration as seconds: a number, or text like `90s`, `15m`, `6h`, `1d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 15m, 6h, 1d, not yes/no")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (seconds, or a number with s, m, h or d: 15m)")
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    return value


def _env_name(value: str | None) -> str | None:
    # The variable's name, never its value: a pasted secret must not sit in the file.
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError("must be the name of an environment variable (letters, digits, _), not its value")
    return value


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"no such file {str(value)!r} (paths are relative to the config file)")
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class MetricsConfig(_Strict):
    """Prometheus metrics of `meldpunt serve`. Off by default; when on, they are either on a
    listener of their own (`port`, on `host`, for a scraper on a private network) or on the
    TAXII port at /metrics behind a bearer token (`token_env` names the variable holding it),
    or both. Never open to anyone who can reach the TAXII port."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    token_env: str | None = None

    _check_env = field_validator("token_env")(_env_name)

    @model_validator(mode="after")
    def _guarded(self) -> MetricsConfig:
        if self.enabled and self.port is None and self.token_env is None:
            raise ValueError(
                "enabled metrics need a port (a listener of their own) or token_env (a bearer token "
                "for /metrics on the TAXII port): they are never served unguarded"
            )
        return self


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(6100, ge=1, le=65535)
    title: str = "Security Meldpunt TAXII server"
    api_root: Slug = "meldpunt"
    # Where recipients reach this server (behind a proxy): MISP events link back to it.
    public_url: str | None = Field(None, pattern=r"^https?://")
    page_size_default: int = Field(100, ge=1)
    page_size_max: int = Field(1000, ge=1)
    max_content_length: int = Field(10 * 1024 * 1024, ge=1024)
    # Objects one inbox POST may hold; more is refused whole (413) before any is validated.
    max_objects_per_post: int = Field(10_000, ge=1, le=1_000_000)
    # Seconds between the server's rounds of building MISP feed events that changed.
    misp_feed_refresh_seconds: float = Field(10.0, ge=0.1, le=3600)

    # Name of the environment variable holding the key that signs `next` tokens. All server
    # processes behind one address must share it; unset, a random per-process key is used.
    token_secret_env: str = "MELDPUNT_TOKEN_SECRET"

    # Proxies whose X-Forwarded-For is believed (networks). Empty: the header is ignored and
    # the client is the connecting address, whoever it is (loopback included).
    trusted_proxies: list[Network] = []
    # Largest request line plus headers accepted (bytes); beyond it 414 or 431.
    max_request_head_bytes: int = Field(16 * 1024, ge=4096, le=1024 * 1024)
    # Password and token verifications (argon2, 64 MiB each) running at once, in all and per
    # client address; a request beyond either bound is refused (429) before anything is hashed.
    max_concurrent_verifications: int = Field(4, ge=1, le=64)
    max_concurrent_verifications_per_client: int = Field(2, ge=1, le=64)
    # Processes serving the port (uvicorn workers; PostgreSQL for more than one: see README).
    workers: int = Field(1, ge=1, le=64)
    # After SIGTERM, how long requests in flight may take to finish before they are cancelled.
    shutdown_timeout: Seconds = 30.0
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        return _strict_networks(value)

    @model_validator(mode="after")
    def _default_within_max(self) -> ServerConfig:
        if self.page_size_default > self.page_size_max:
            raise ValueError(
                f"page_size_default ({self.page_size_default}) exceeds page_size_max ({self.page_size_max})"
            )
        if self.metrics.port is not None and self.metrics.port == self.port:
            raise ValueError(f"metrics.port {self.metrics.port} is the TAXII port: give the metrics another")
        if self.api_root in ("portal", "taxii2", "misp-feed", "healthz", "readyz", "metrics"):
            raise ValueError(f"api_root {self.api_root!r} is a path the server uses for something else")
        return self


class MispPull(_Strict):
    """Events pulled from a partner's MISP instance (Connect2Trust) by `meldpunt run`, through
    PyMISP's restSearch, and ingested as the `misp-event` format."""

    url: str = Field(pattern=r"^https?://")
    key_env: str
    verify_tls: bool = True
    ca_bundle: Path | None = None
    interval: Seconds = 900.0
    # restSearch filters: only events with these tags (`rsit:%`), only published ones.
    tags: list[str] = []
    published: bool = True
    # The first pull asks for events changed this long ago; later ones since the last
    # successful pull began, less `overlap` (re-ingesting an event changes nothing).
    first_pull: Seconds = 86400.0
    overlap: Seconds = 300.0

    _check_env = field_validator("key_env")(_env_name)

    _ca_bundle_exists = field_validator("ca_bundle")(_existing_file)


class PartnerConfig(_Strict):
    id: Slug
    name: str
    default_tlp: Tlp = "amber"
    # Adapters (ingest formats) this partner may deliver through; empty means any.
    formats: list[str] = []
    misp_pull: MispPull | None = None

    @model_validator(mode="after")
    def _pull_is_a_format(self) -> PartnerConfig:
        if self.misp_pull is not None and self.formats and "misp-event" not in self.formats:
            raise ValueError("misp_pull ingests the misp-event format: add misp-event to formats")
        return self


class SchedulerConfig(_Strict):
    """The recurring work `meldpunt run` does: spool pick-up, MISP pulls, MISP sync."""

    # Partners drop files in spool_dir/PARTNER/FORMAT/ (relative to the config file).
    spool_dir: Path | None = None
    spool_interval: Seconds = 60.0
    # A file is picked up only once unchanged (size and modification time) for this long, so
    # one still being written is left alone; `.part` files never are (write, then rename).
    settle_seconds: Annotated[float, BeforeValidator(_seconds), Field(ge=0)] = 30.0
    misp_sync_interval: Seconds | None = 300.0  # null: `meldpunt run` does not sync
    keep_done_days: int = Field(30, ge=1)  # done/ and failed/ files are deleted after this

    @field_validator("spool_dir")
    @classmethod
    def _spool_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"no such directory {str(value)!r} (paths are relative to the config file)")
        return value


LEAKED_CREDENTIALS = "information-content-security/data-leak"
DEFAULT_RETENTION_DAYS = 400
DEFAULT_CLASSIFICATION_DAYS = {LEAKED_CREDENTIALS: 30}


class RetentionConfig(_Strict):
    """How long notifications are kept after their last version was received, per RSIT
    classification (`taxonomy/type` wins over `taxonomy`, which wins over `default_days`).
    Leaked credentials are kept 30 days unless set otherwise here."""

    default_days: int = Field(DEFAULT_RETENTION_DAYS, ge=1)
    classifications: dict[str, Annotated[int, Field(ge=1)]] = {}
    # Quarantined and skipped rows of runs (their raw lines may hold anything the input did).
    quarantine_days: int = Field(30, ge=1)

    @field_validator("classifications")
    @classmethod
    def _known(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            check_category(key)
        return value

    def periods(self) -> dict[str, int]:
        """Days per classification: the defaults (leaked credentials 30) with the configured."""
        return {**DEFAULT_CLASSIFICATION_DAYS, **self.classifications}

    def days_for(self, taxonomy: str, type_: str) -> int:
        periods = self.periods()
        found = periods.get(f"{taxonomy}/{type_}", periods.get(taxonomy))
        return self.default_days if found is None else found


class Constituency(_Strict):
    networks: list[Network] = []
    asns: list[Annotated[int, Field(ge=1, le=4294967295)]] = []
    domains: list[str] = []

    @field_validator("networks", mode="before")
    @classmethod
    def _networks_strict(cls, value: Any) -> Any:
        return _strict_networks(value)

    @field_validator("asns", mode="before")
    @classmethod
    def _asns_not_booleans(cls, value: Any) -> Any:
        # YAML reads `yes`/`true` as a boolean, and a boolean passes as the number 1 (AS1).
        if isinstance(value, list):
            flags = [f"item {i}: {item!r}" for i, item in enumerate(value) if isinstance(item, bool)]
            if flags:
                raise ValueError(f"AS numbers must be numbers, not yes/no ({'; '.join(flags)})")
        return value

    @field_validator("domains")
    @classmethod
    def _domains_valid(cls, value: list[str]) -> list[str]:
        return [claimable_domain(item) for item in value]


def _strict_networks(value: Any) -> Any:
    # Host bits set ("192.0.2.1/24") is almost always a typo for another prefix: refuse it.
    if not isinstance(value, list):
        return value
    out, faults = [], []
    for index, item in enumerate(value):
        if "%" in str(item):  # a scoped IPv6 address names an interface; the router cannot take it
            faults.append(f"item {index}: invalid network {item!r}: an IPv6 zone (%...) is no network")
            continue
        try:
            network = ipaddress.ip_network(str(item), strict=True)
        except ValueError as exc:  # every bad one at once: an operator fixes them in one go
            faults.append(f"item {index}: invalid network {item!r}: {exc}")
            continue
        ipv4 = mapped_ipv4_network(network) if isinstance(network, ipaddress.IPv6Network) else None
        if ipv4 is not None:
            # The router looks mapped addresses up as IPv4 (connector/routing.py): such a claim
            # would never match, and beside 192.0.2.0/24 it would be a second, unnoticed claim.
            faults.append(
                f"item {index}: invalid network {item!r}: an IPv4-mapped IPv6 network; its "
                f"addresses are routed as IPv4, claim {ipv4.with_prefixlen} instead"
            )
            continue
        out.append(network)
    if faults:
        raise ValueError("; ".join(faults))
    return out


def _valid_domain(item: str) -> str:
    domain = item.strip().rstrip(".").lower()
    if not _DOMAIN_RE.match(domain):
        raise ValueError(f"invalid domain {item!r}")
    return domain


def claimable_domain(item: str) -> str:
    domain = _valid_domain(item)
    if is_public_suffix(domain):
        raise ValueError(f"{domain!r} is a public suffix; nobody can claim it, claim a registered domain")
    return domain


class OptOut(_Strict):
    """Networks and domains whose owners asked not to be notified: delivery is suppressed."""

    networks: list[Network] = []
    domains: list[str] = []

    @field_validator("networks", mode="before")
    @classmethod
    def _networks_strict(cls, value: Any) -> Any:
        return _strict_networks(value)

    @field_validator("domains")
    @classmethod
    def _domains_valid(cls, value: list[str]) -> list[str]:
        return [_valid_domain(item) for item in value]


class MispChannel(_Strict):
    """Push to a recipient's MISP instance (PyMISP), and/or offer it a MISP feed."""

    url: str | None = Field(None, pattern=r"^https?://")
    key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    verify_tls: bool = True
    ca_bundle: Path | None = None
    # Keep one constituent's data from the others on a shared sector instance.
    distribution: Literal["organisation", "sharing-group"] = "organisation"
    sharing_group: str | None = None  # numeric id, name or UUID, with distribution sharing-group
    group_by: Literal["case-day", "feed-day"] = "case-day"
    publish: bool = False
    max_attempts: int = Field(8, ge=1)
    feed: bool = False  # serve the recipient's events as a MISP feed

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        # Read only at the first push, where it would be a TLS error on every entry.
        if value is not None and not value.is_file():
            raise ValueError(f"no such file {str(value)!r} (paths are relative to the config file)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> MispChannel:
        if self.distribution == "sharing-group" and not self.sharing_group:
            raise ValueError("distribution sharing-group needs sharing_group (name or UUID)")
        if self.url and not self.key_env:
            raise ValueError("url needs key_env: the API key comes from an environment variable")
        return self


class RecipientConfig(_Strict):
    id: Slug
    name: str
    kind: Literal["sector-cert", "link-organisation", "organisation"]
    parent: Slug | None = None
    deliver_to_parent: bool = True
    max_tlp: Tlp = "amber"
    # RSIT taxonomies (`vulnerable`) or taxonomy/type (`vulnerable/vulnerable-system`) this
    # recipient accepts; empty: all.
    categories: list[str] = []
    constituency: Constituency = Constituency()
    misp: MispChannel | None = None

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str]) -> list[str]:
        return [check_category(v) for v in value]

    def accepts(self, taxonomy: str, type_: str) -> bool:
        return not self.categories or taxonomy in self.categories or f"{taxonomy}/{type_}" in self.categories


def _argon2_hash(value: str) -> str:
    # A plaintext secret here would be a secret in the repository: refuse to start.
    if not value.startswith("$argon2"):
        raise ValueError("must be an argon2 hash printed by `meldpunt hash-password` or `create-token`")
    return value


class ApiToken(_Strict):
    """A bearer API token: the id is public (it finds the user), only the secret's hash is kept."""

    id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    hash: str

    _check_hash = field_validator("hash")(_argon2_hash)


class UserConfig(_Strict):
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")]
    password_hash: str | None = None
    tokens: list[ApiToken] = []
    recipient: Slug | None = None
    inbox: Slug | None = None
    # Operators may read every collection and delete objects; nobody else may delete.
    operator: bool = False

    @field_validator("password_hash")
    @classmethod
    def _is_a_hash(cls, value: str | None) -> str | None:
        return None if value is None else _argon2_hash(value)


DATABASE_BACKENDS = ("sqlite", "postgresql")


def _database_url(value: str) -> str:
    # Checked here so a typo stops the load naming the key, instead of surfacing as an
    # SQLAlchemy or driver traceback from the first command that opens the store. The URL
    # itself is never echoed: it may hold a password.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "not a database URL (sqlite:///path.db or postgresql+psycopg://user@host/db)"
        ) from None
    backend = url.get_backend_name()
    if backend not in DATABASE_BACKENDS:
        raise ValueError(f"unsupported database {backend!r} (one of {', '.join(DATABASE_BACKENDS)})")
    if backend == "postgresql" and not url.database:
        raise ValueError("the PostgreSQL URL names no database (postgresql+psycopg://user@host/db)")
    return value


class Config(_Strict):
    # A relative SQLite path is relative to the config file (load_config resolves it).
    database: str = DEFAULT_DATABASE
    server: ServerConfig = ServerConfig()
    mappings_dir: Path | None = None
    partners: list[PartnerConfig] = []
    recipients: list[RecipientConfig] = []
    # CSV files with more recipients (see `meldpunt recipients import`), relative to this file.
    recipient_files: list[Path] = []
    # IP-to-ASN table in pyasn's ipasn format ("prefix<TAB>asn" lines), relative to this file.
    asn_table: Path | None = None
    opt_out: OptOut = OptOut()
    users: list[UserConfig] = []
    scheduler: SchedulerConfig = SchedulerConfig()
    retention: RetentionConfig = RetentionConfig()

    _check_database = field_validator("database")(_database_url)

    # Read only when routing starts: a missing file would surface there as a traceback.
    _asn_table_exists = field_validator("asn_table")(_existing_file)

    @field_validator("mappings_dir")
    @classmethod
    def _mappings_dir_exists(cls, value: Path | None) -> Path | None:
        # A directory that is not there held no mappings: every format was "unknown".
        if value is not None and not value.is_dir():
            raise ValueError(f"no such directory {str(value)!r} (paths are relative to the config file)")
        return value

    def recipient(self, recipient_id: str) -> RecipientConfig:
        for r in self.recipients:
            if r.id == recipient_id:
                return r
        raise KeyError(recipient_id)

    def partner(self, partner_id: str) -> PartnerConfig:
        for p in self.partners:
            if p.id == partner_id:
                return p
        raise KeyError(partner_id)


# --- loading ---------------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str] | None = None, *, new_recipient_files: bool = False) -> Config:
    """The configuration at `path` (config_path), recipient files merged in. With
    `new_recipient_files` (recipients import, which writes the first of them), a recipient
    file that does not exist yet, or is empty, holds no recipients instead of being an error."""
    source = config_path(path)
    try:
        raw = load_yaml(source)
    except YamlFileError as exc:
        raise ConfigError(str(source), [str(exc)]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(source), ["top level must be a mapping of keys"])
    from_env = bool(os.environ.get(DATABASE_ENV))
    if from_env:
        # The variable belongs to the shell it was set in: a relative SQLite path in it stays
        # relative to the working directory, as SQLAlchemy takes it.
        raw["database"] = os.environ[DATABASE_ENV]
    else:
        raw.setdefault("database", DEFAULT_DATABASE)
        if isinstance(raw["database"], str):
            raw["database"] = sqlite_url_relative_to(raw["database"], source.parent)
    _resolve_paths(raw, source.parent)
    problems = _add_recipient_files(raw, new_recipient_files)
    if problems:
        raise ConfigError(str(source), problems)
    try:
        return parse_config(raw, source=str(source))
    except ConfigError as exc:
        if not from_env:
            raise
        # The file's own `database` key is not where the operator should look.
        env_key = f"database (from ${DATABASE_ENV}):"
        problems = [
            env_key + p.removeprefix("database:") if p.startswith("database:") else p for p in exc.problems
        ]
        raise ConfigError(exc.source, problems) from None


def sqlite_url_relative_to(url: str, base: Path) -> str:
    """A SQLite URL whose relative file path is taken relative to `base` (made absolute).

    Relative to the working directory, `cd elsewhere && meldpunt export -c ../meldpunt.yaml`
    opened a new, empty store in `elsewhere` and exported nothing, successfully. Other URLs,
    in-memory and `file:` URI databases are returned as they are; a URL that does not parse is
    left to the `database` check to report.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:") or parsed.query.get("uri") or Path(database).is_absolute():
        return url
    resolved = parsed.set(database=os.path.abspath(base / database))
    return resolved.render_as_string(hide_password=False)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """File references in the config are relative to the config file, not the working directory:
    the same file must mean the same deployment wherever a command runs (an absolute path is
    kept: `base / "/abs"` is `/abs`)."""
    for key in ("asn_table", "mappings_dir"):
        if isinstance(raw.get(key), str):
            raw[key] = str(base / raw[key])
    for recipient in raw.get("recipients") or []:
        misp = recipient.get("misp") if isinstance(recipient, dict) else None
        if isinstance(misp, dict) and isinstance(misp.get("ca_bundle"), str):
            misp["ca_bundle"] = str(base / misp["ca_bundle"])
    for partner in raw.get("partners") or []:
        pull = partner.get("misp_pull") if isinstance(partner, dict) else None
        if isinstance(pull, dict) and isinstance(pull.get("ca_bundle"), str):
            pull["ca_bundle"] = str(base / pull["ca_bundle"])
    scheduler = raw.get("scheduler")
    if isinstance(scheduler, dict) and isinstance(scheduler.get("spool_dir"), str):
        scheduler["spool_dir"] = str(base / scheduler["spool_dir"])
    if isinstance(raw.get("recipient_files"), list):
        raw["recipient_files"] = [str(base / f) if isinstance(f, str) else f for f in raw["recipient_files"]]


def _add_recipient_files(raw: dict[str, Any], new_ones: bool = False) -> list[str]:

    files = raw.get("recipient_files")
    if not isinstance(files, list) or not files:
        return []
    if raw.get("recipients") is None:
        raw["recipients"] = []
    if not isinstance(raw["recipients"], list):
        return []
    problems: list[str] = []
    for name in files:
        path = Path(str(name))
        if new_ones and (not path.exists() or path.stat().st_size == 0):
            continue  # recipients import creates it
        rows, found = read_recipient_rows(path, RecipientConfig.model_validate)
        raw["recipients"].extend(rows)
        problems.extend(found)
    return problems


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err, raw) for err in exc.errors()]) from None
    problems = list(consistency_problems(config))
    if problems:
        raise ConfigError(source, problems)
    return config


def _describe(err: Any, raw: dict[str, Any]) -> str:
    return f"{_key_path(err['loc'], raw)}: {_message(err)}"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _key_path(loc: Iterable[Any], raw: Any) -> str:
    """Render ('recipients', 2, 'max_tlp') as recipients[2](zcert).max_tlp, naming the item."""
    parts: list[str] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(node, list) and part < len(node):
                node = node[part]
                ident = node.get("id") or node.get("username") if isinstance(node, dict) else None
                if ident:
                    label += f"({ident})"
            parts.append(label)
        else:
            # pydantic reports a union member's type name as an extra location element.
            if str(part) in ("IPv4Network", "IPv6Network", "function-before[_networks_strict()]"):
                continue
            parts.append(("." if parts else "") + str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def consistency_problems(config: Config) -> Iterable[str]:
    """Rules that span items: unique ids, known references, unambiguous ownership."""
    yield from _duplicates("partners", [p.id for p in config.partners])
    yield from _duplicates("recipients", [r.id for r in config.recipients])
    yield from _duplicates("users", [u.username for u in config.users], what="username")
    yield from _duplicates("users[].tokens", [t.id for u in config.users for t in u.tokens])
    recipients = {r.id: r for r in config.recipients}
    partners = {p.id for p in config.partners}
    for i, r in enumerate(config.recipients):
        if r.parent is not None and r.parent not in recipients:
            yield f"recipients[{i}]({r.id}).parent: unknown recipient {r.parent!r}"
        if r.parent == r.id:
            yield f"recipients[{i}]({r.id}).parent: a recipient cannot be its own parent"
        if TLP_LEVELS[r.max_tlp] > TLP_LEVELS["red"]:  # pragma: no cover - Literal guards this
            yield f"recipients[{i}]({r.id}).max_tlp: unknown level"
    yield from _parent_cycles(config)
    yield from _ownership_conflicts(config)
    for i, p in enumerate(config.partners):
        if p.misp_pull is not None and config.scheduler.spool_dir is None:
            yield (
                f"partners[{i}]({p.id}).misp_pull: needs scheduler.spool_dir (pulled events are kept "
                "there, in PARTNER/misp-event/done/, like any delivered file)"
            )
    for i, u in enumerate(config.users):
        where = f"users[{i}]({u.username})"
        if u.recipient is None and u.inbox is None and not u.operator:
            yield f"{where}: grants nothing; set recipient (read), inbox (write) or operator"
        if u.password_hash is None and not u.tokens:
            yield f"{where}: has no credentials; set password_hash or tokens"
        if u.recipient is not None and u.recipient not in recipients:
            yield f"{where}.recipient: unknown recipient {u.recipient!r}"
        if u.inbox is not None and u.inbox not in partners:
            yield f"{where}.inbox: unknown partner {u.inbox!r}"


def _duplicates(section: str, ids: list[str], what: str = "id") -> Iterable[str]:
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in seen:
            yield f"{section}[{i}].{what}: duplicate {what} {ident!r} (first at {section}[{seen[ident]}])"
        else:
            seen[ident] = i


def _parent_cycles(config: Config) -> Iterable[str]:
    parents = {r.id: r.parent for r in config.recipients}
    reported: set[str] = set()
    for start in parents:
        path = [start]
        node = parents.get(start)
        while node is not None and node in parents:
            if node in path:
                if node == start and len(path) == 1:
                    break  # a recipient that is its own parent is reported on its own
                cycle = [*path[path.index(node) :], node]
                if not reported.intersection(cycle):
                    yield "recipients: parent cycle " + " -> ".join(cycle)
                    reported.update(cycle)
                break
            path.append(node)
            node = parents.get(node)


def _ownership_conflicts(config: Config) -> Iterable[str]:
    """Two claims on the very same prefix, AS or domain are ambiguous; nesting is not.

    CIDR prefixes either nest or are disjoint, so "overlap that is not a proper more-specific"
    reduces to the same prefix claimed twice (by two recipients, or twice by one).
    """
    claims: dict[tuple[str, str], str] = {}
    for i, r in enumerate(config.recipients):
        where = f"recipients[{i}]({r.id}).constituency"
        items: list[tuple[str, str]] = [("networks", n.with_prefixlen) for n in r.constituency.networks]
        items += [("asns", str(a)) for a in r.constituency.asns]
        items += [("domains", d) for d in r.constituency.domains]
        for section, value in items:
            owner = claims.get((section, value))
            if owner is None:
                claims[(section, value)] = r.id
            elif owner == r.id:
                yield f"{where}.{section}: {value} is listed twice"
            else:
                yield (
                    f"{where}.{section}: {value} is already claimed by recipient {owner!r}; "
                    "only a strictly more specific claim may overlap another"
                )
