"""CURVE authentication and encryption for the actor <-> learner sockets (issue 4, Security).

The learner binds; actors connect. On anything but loopback the learner's sockets are CURVE
servers and only actors whose public key is in the learner's ``authorized/`` directory get
through: an actor with a wrong or missing key can neither push transitions (DEALER ->
ROUTER) nor receive weights (PUB -> SUB). Everything is ``zmq.auth``: certificate files
written by ``zmq.auth.create_certificates`` and a ``ThreadAuthenticator`` answering ZAP
requests. The default bind is 127.0.0.1, where no keys are needed; ``check_bind_address``
refuses a public bind without keys unless the user said ``--insecure``.

Key directories
---------------
``hilrl keys --out DIR --actors 2`` (``generate_keys``) writes::

    DIR/learner.key_secret          the learner's key pair           }  the learner's keys_dir:
    DIR/learner.key                 the learner's public key         }  load_server_keys(DIR)
    DIR/authorized/actor0.key       public keys of the actors the    }
    DIR/authorized/actor1.key       learner accepts                  }
    DIR/actors/actor0/actor0.key_secret   actor0's key pair          }  actor0's keys_dir, copied
    DIR/actors/actor0/actor0.key          actor0's public key        }  to its robot PC:
    DIR/actors/actor0/learner.key         the learner's public key   }  load_client_keys(...)
    DIR/actors/actor1/...

The files are zmq's certificate format (``load_certificate`` reads them). A ``.key_secret``
file holds both keys of a pair and must be private to its owner (no group/other permission
bits; written 0600); the loaders refuse it otherwise, like ssh does. Public ``.key`` files
may be shared freely. To add an actor later, put its ``NAME.key`` into ``authorized/`` and
restart the learner; to revoke one, delete its file and restart.

Authenticator
-------------
ZAP handlers are per context (libzmq binds ``inproc://zeromq.zap.01``), so
``secure_server_socket`` starts one ``ThreadAuthenticator`` per context and reuses it for the
context's other sockets. Each distinct authorised set gets its own ZAP domain, so two server
sockets on one context with different sets do not widen each other's. Sockets are made with
``ZMQ_ZAP_ENFORCE_DOMAIN`` where libzmq has it: without a ZAP handler they refuse every
client instead of libzmq's legacy "encrypt but accept anyone". Call ``stop_authenticator``
after closing the server sockets and before ``context.term()`` (the authenticator's own
sockets would otherwise keep ``term()`` waiting forever).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from hilrl.storage.fsutil import atomic_write_bytes

__all__ = [
    "ACTORS_DIR",
    "AUTHORIZED_DIR",
    "SERVER_NAME",
    "ClientKeys",
    "GeneratedKeys",
    "KeyFileError",
    "ServerKeys",
    "check_bind_address",
    "generate_keys",
    "is_local_address",
    "load_client_keys",
    "load_server_keys",
    "secure_client_socket",
    "secure_server_socket",
    "stop_authenticator",
]

log = logging.getLogger(__name__)

SERVER_NAME = "learner"
AUTHORIZED_DIR = "authorized"
ACTORS_DIR = "actors"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_LEN = 40  # a 32-byte curve25519 key in z85
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{" + str(_Z85_KEY_LEN).encode()
                      + rb"}")
# Actor names become file names and zmq routing ids: keep them boring.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_LOGGED_DENIALS = 1000  # unknown keys warned about once each, up to this many


class KeyFileError(ValueError):
    """A key directory or key file is missing, malformed or not private enough; the message
    says which file and what to do."""


@dataclass(frozen=True)
class ServerKeys:
    """The learner's key pair and the z85 public keys of the actors it accepts."""

    public: bytes
    secret: bytes = field(repr=False)  # never in a log line
    authorized_clients: frozenset[bytes]


@dataclass(frozen=True)
class ClientKeys:
    """An actor's key pair and the learner's z85 public key."""

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes


@dataclass(frozen=True)
class GeneratedKeys:
    """What ``generate_keys`` wrote: the learner's keys_dir and one keys_dir per actor."""

    out: Path
    actor_dirs: dict[str, Path]
    # authorized/*.key files that were there before and are still accepted (with --force)
    kept_authorized: tuple[Path, ...] = ()


# ---------------------------------------------------------------------------------------------
# Loading


def load_server_keys(keys_dir: str | os.PathLike[str]) -> ServerKeys:
    """The learner's keys from ``keys_dir`` (layout in the module docstring): its pair from
    ``learner.key_secret`` and every ``authorized/*.key``. Raises KeyFileError (a ValueError)
    saying what to do when anything is missing, unreadable or not private, or when no actor
    is authorised."""
    _require_curve()
    root = _existing_dir(keys_dir, "run `hilrl keys --out DIR` and give the learner DIR")
    public, secret = _load_pair(root / f"{SERVER_NAME}{SECRET_SUFFIX}",
                                "run `hilrl keys --out DIR` on the learner machine")
    return ServerKeys(public, secret, _load_authorized(root / AUTHORIZED_DIR))


def load_client_keys(keys_dir: str | os.PathLike[str],
                     server_public_key_file: str | os.PathLike[str] | None = None) -> ClientKeys:
    """An actor's keys from ``keys_dir``: its pair from the one ``NAME.key_secret`` in it
    (other than ``learner.key_secret``) and the learner's public key from
    ``server_public_key_file`` (default ``keys_dir/learner.key``). Raises KeyFileError (a
    ValueError) saying what to do when a file is missing, unreadable or not private."""
    _require_curve()
    root = _existing_dir(keys_dir, "copy DIR/actors/NAME/ made by `hilrl keys` to this machine")
    public, secret = _load_pair(_actor_secret_file(root), "")
    server_file = (Path(server_public_key_file) if server_public_key_file is not None
                   else root / f"{SERVER_NAME}{PUBLIC_SUFFIX}")
    if server_file.name.endswith(SECRET_SUFFIX):
        raise KeyFileError(
            f"{server_file} is a secret key file; an actor needs only the learner's public key "
            f"({SERVER_NAME}{PUBLIC_SUFFIX}). Do not copy secret keys to robot PCs.")
    server_public = _load_public(
        server_file, f"copy {SERVER_NAME}{PUBLIC_SUFFIX} from the learner's key directory "
                     f"(made by `hilrl keys`) to {server_file}")
    return ClientKeys(public, secret, server_public)


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise KeyFileError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE; "
                           "install the pyzmq wheel from PyPI, which has it")


def _existing_dir(keys_dir: str | os.PathLike[str], what_to_do: str) -> Path:
    root = Path(keys_dir)
    if not root.is_dir():
        raise KeyFileError(f"key directory {root} does not exist; {what_to_do}")
    return root


def _actor_secret_file(root: Path) -> Path:
    server_secret = f"{SERVER_NAME}{SECRET_SUFFIX}"
    found = sorted(p for p in root.glob(f"*{SECRET_SUFFIX}") if p.name != server_secret)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise KeyFileError(f"{root} holds several actor secret keys ({names}); keep only this "
                           "actor's pair there (one DIR/actors/NAME/ from `hilrl keys`)")
    hint = ""
    if (root / ACTORS_DIR).is_dir():
        hint = f" (this looks like the learner's directory: use {root / ACTORS_DIR}/NAME)"
    raise KeyFileError(f"no actor secret key (NAME{SECRET_SUFFIX}) in {root}{hint}; copy "
                       "DIR/actors/NAME/ made by `hilrl keys` to this machine and use it")


def _load_pair(secret_file: Path, what_to_do: str) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate that only its owner may read."""
    if not secret_file.is_file():
        raise KeyFileError(f"secret key file {secret_file} is missing"
                           + (f"; {what_to_do}" if what_to_do else ""))
    _check_private(secret_file)
    public, secret = _read_certificate(secret_file)
    if secret is None:
        raise KeyFileError(f"{secret_file} has no secret-key line; it is a public certificate. "
                           "Use the .key_secret file written by `hilrl keys`")
    _check_key(secret_file, "secret-key", secret)
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{secret_file}: the public-key line does not belong to the "
                           "secret-key; the file was edited or mixed up. Generate new keys "
                           "with `hilrl keys`")
    return public, secret


def _load_public(path: Path, what_to_do: str) -> bytes:
    if not path.is_file():
        raise KeyFileError(f"public key file {path} is missing; {what_to_do}")
    public, _ = _read_certificate(path)
    return public


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}; check that it "
                           "exists and this user may read it") from None
    except ValueError:
        raise KeyFileError(f"{path} is not a ZeroMQ certificate (no public-key line); "
                           "use the files written by `hilrl keys`") from None
    _check_key(path, "public-key", public)
    return public, secret


def _check_key(path: Path, what: str, key: bytes) -> None:
    if not _Z85_KEY.fullmatch(key):
        raise KeyFileError(f"{path}: the {what} is not a {_Z85_KEY_LEN}-character z85 CURVE "
                           "key; the file is damaged. Generate new keys with `hilrl keys`")


def _check_private(path: Path) -> None:
    """Refuse a secret key that others could read (or replace): like ssh, any group/other
    permission bit is too much, since a copied secret key lets anyone pose as its owner."""
    if os.name != "posix":  # no POSIX modes to check (Windows ACLs are out of scope)
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from None
    if mode & 0o077:
        raise KeyFileError(f"secret key file {path} is accessible by other users (mode "
                           f"{mode:04o}); secret keys must be private: chmod 600 {path}")


def _load_authorized(directory: Path) -> frozenset[bytes]:
    what_to_do = ("put the public key (NAME.key) of every actor allowed to connect there; "
                  "`hilrl keys` does this")
    if not directory.is_dir():
        raise KeyFileError(f"directory of authorised actor keys {directory} is missing; "
                           f"{what_to_do}")
    keys = frozenset(_load_public(p, what_to_do) for p in sorted(directory.glob(
        f"*{PUBLIC_SUFFIX}")))
    secrets = sorted(p.name for p in directory.glob(f"*{SECRET_SUFFIX}"))
    if secrets:  # harmless for the learner, but an actor's secret has leaked off its robot PC
        log.warning("%s holds secret keys (%s): only public .key files belong there; delete "
                    "them and consider generating new keys for those actors", directory,
                    ", ".join(secrets))
    if not keys:
        raise KeyFileError(f"no authorised actor keys (*{PUBLIC_SUFFIX}) in {directory}, so no "
                           f"actor could connect; {what_to_do}")
    return keys


# ---------------------------------------------------------------------------------------------
# Sockets


class _KeyAllowList:
    """ZAP credentials provider: per ZAP domain, the set of z85 client keys let in."""

    def __init__(self) -> None:
        self._allowed: dict[str, frozenset[bytes]] = {}
        self._denied_logged: set[bytes] = set()

    def add(self, domain: str, keys: frozenset[bytes]) -> None:
        self._allowed = {**self._allowed, domain: keys}  # replaced whole: read by the ZAP thread

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._allowed.get(domain, frozenset()):
            return True
        # A rejected actor reconnects every few hundred ms: warn once per key, not per try.
        if key not in self._denied_logged and len(self._denied_logged) < _MAX_LOGGED_DENIALS:
            self._denied_logged.add(key)
            log.warning("rejected a CURVE connection from unauthorised public key %s; if that "
                        "actor should connect, put its .key file into the learner's %s/ and "
                        "restart the learner", key.decode("ascii", "replace"), AUTHORIZED_DIR)
        return False


_lock = threading.Lock()
# context handle -> (authenticator, allow list); handles, because a zmq.asyncio.Context and
# a zmq.Context can share one libzmq context (and therefore one ZAP endpoint)
_authenticators: dict[int, tuple[ThreadAuthenticator, _KeyAllowList]] = {}


def secure_server_socket(sock: zmq.Socket, keys: ServerKeys, context: zmq.Context) -> None:
    """Make ``sock`` (ROUTER, PUB or any other binding socket) a CURVE server that accepts
    only ``keys.authorized_clients``. Call it before ``bind``. Starts the context's
    authenticator on first use; stop it with ``stop_authenticator(context)``."""
    _require_curve()
    if sock.context.underlying != context.underlying:
        raise ValueError("secure_server_socket: the socket belongs to another context than the "
                         "one given; the authenticator must run on the socket's own context")
    _require_unused(sock, "bind")
    if not keys.authorized_clients:
        raise ValueError("no authorised actor keys: no actor could connect. Put their .key "
                         f"files into the learner's {AUTHORIZED_DIR}/ (`hilrl keys` does this)")
    domain = "hilrl-" + hashlib.sha256(b"\n".join(sorted(keys.authorized_clients))).hexdigest()[:16]
    with _lock:
        entry = _authenticators.get(context.underlying)
        if entry is None:
            auth = ThreadAuthenticator(context)
            auth.start()
            entry = _authenticators[context.underlying] = (auth, _KeyAllowList())
        auth, allow = entry
        allow.add(domain, keys.authorized_clients)
        auth.configure_curve_callback(domain, credentials_provider=allow)
    sock.zap_domain = domain.encode()
    _enforce_zap(sock)
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    log.info("CURVE on: %d actor key(s) authorised", len(keys.authorized_clients))


def secure_client_socket(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make ``sock`` (DEALER, SUB, ...) a CURVE client of the learner. Call it before
    ``connect``. A wrong server key or an unauthorised own key means nothing gets through;
    libzmq keeps retrying the handshake quietly (the learner logs the rejection)."""
    _require_curve()
    _require_unused(sock, "connect")
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the authenticator ``secure_server_socket`` started on ``context``, if any. Close
    the server sockets first; call before ``context.term()``. Safe to call twice."""
    with _lock:
        entry = _authenticators.pop(context.underlying, None)
    if entry is not None:
        entry[0].stop()


def _require_unused(sock: zmq.Socket, verb: str) -> None:
    # Security options apply to connections made after they are set: setting them on a
    # socket that is already bound/connected would leave its first endpoint open.
    if sock.get(zmq.LAST_ENDPOINT):
        raise ValueError(f"set up CURVE on the socket before {verb}(); it is already bound or "
                         "connected, and that endpoint would stay unauthenticated")


def _enforce_zap(sock: zmq.Socket) -> None:
    option = getattr(zmq, "ZAP_ENFORCE_DOMAIN", None)
    if option is None:
        return
    try:
        sock.setsockopt(option, 1)
    except zmq.ZMQError:  # libzmq without the (draft) option: the authenticator still rules
        pass


# ---------------------------------------------------------------------------------------------
# Bind addresses


def is_local_address(address: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only: tcp:// on a loopback
    address or ``localhost``, ipc://, inproc://. Anything else (0.0.0.0, *, a LAN address,
    an interface or host name, other transports) counts as public."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"{address!r} is not a ZeroMQ endpoint; expected e.g. "
                         "tcp://127.0.0.1:5555")
    scheme = scheme.lower()
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0] if ":" in rest else rest
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # "*", interface names, host names
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_bind_address(address: str, keys: ServerKeys | None, insecure: bool) -> None:
    """Refuse (ValueError) to bind ``address`` beyond loopback without CURVE keys unless
    ``insecure``; with ``insecure`` warn loudly instead, since anyone on the network could
    then push data into training and read the policy."""
    if is_local_address(address) or keys is not None:
        return
    if not insecure:
        raise ValueError(
            f"refusing to bind {address} without encryption: it is reachable from other "
            "machines, and anyone there could feed the learner data or read its weights. "
            "Run `hilrl keys --out DIR` and pass the keys, bind tcp://127.0.0.1 instead, or "
            "pass --insecure on a network you trust completely")
    log.warning("INSECURE: binding %s with no authentication and no encryption (--insecure). "
                "Anyone who can reach this port can send transitions into training and receive "
                "the policy. Use `hilrl keys` unless this network is fully trusted.", address)


# ---------------------------------------------------------------------------------------------
# Generating


def generate_keys(out: str | os.PathLike[str], actors: list[str],
                  force: bool = False) -> GeneratedKeys:
    """Write the learner's key pair, one pair per actor name and the learner's ``authorized/``
    copies into ``out`` (layout in the module docstring). Secret files are 0600 from the
    moment they exist. Refuses (KeyFileError) to replace existing keys unless ``force``."""
    _require_curve()
    _check_names(actors)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise KeyFileError(f"{root} exists and is not a directory; choose another --out")
    learner = [root / f"{SERVER_NAME}{PUBLIC_SUFFIX}", root / f"{SERVER_NAME}{SECRET_SUFFIX}"]
    targets = learner + [p for name in actors for p in _actor_files(root, name)]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        shown = ", ".join(str(p.relative_to(root)) for p in existing[:4])
        more = f" and {len(existing) - 4} more" if len(existing) > 4 else ""
        raise KeyFileError(f"{root} already holds keys ({shown}{more}); pass --force to "
                           "replace them (then every actor needs its new keys) or choose "
                           "another --out")
    root.mkdir(parents=True, exist_ok=True)
    # zmq writes certificates with the umask's mode; a private scratch dir (0700) keeps the
    # secrets unreadable until they are installed 0600.
    scratch = Path(tempfile.mkdtemp(prefix=".hilrl-keys-", dir=root))
    try:
        learner_pub, learner_sec = zmq.auth.create_certificates(scratch, SERVER_NAME)
        _install(Path(learner_pub), learner[0], secret=False)
        _install(Path(learner_sec), learner[1], secret=True)
        for name in actors:
            pub, sec = zmq.auth.create_certificates(scratch, name)
            authorized, own_pub, own_sec, server_pub = _actor_files(root, name)
            _install(Path(pub), authorized, secret=False)
            _install(Path(pub), own_pub, secret=False)
            _install(Path(sec), own_sec, secret=True)
            _install(Path(learner_pub), server_pub, secret=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    generated = {f"{name}{PUBLIC_SUFFIX}" for name in actors}
    kept = tuple(sorted(p for p in (root / AUTHORIZED_DIR).glob(f"*{PUBLIC_SUFFIX}")
                        if p.name not in generated))
    return GeneratedKeys(root, {name: root / ACTORS_DIR / name for name in actors}, kept)


def _check_names(actors: list[str]) -> None:
    if not actors:
        raise KeyFileError("no actors named: give --actors N or --actor NAME")
    for name in actors:
        if not _NAME_RE.fullmatch(name) or name == SERVER_NAME:
            raise KeyFileError(f"bad actor name {name!r}: use 1-64 letters, digits, '_', '.' "
                               f"or '-', starting with a letter or digit, not {SERVER_NAME!r}")
    duplicates = sorted({n for n in actors if actors.count(n) > 1})
    if duplicates:
        raise KeyFileError(f"actor names must be unique; repeated: {', '.join(duplicates)}")


def _actor_files(root: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """(authorized copy, own public, own secret, learner's public) for actor ``name``."""
    own = root / ACTORS_DIR / name
    return (root / AUTHORIZED_DIR / f"{name}{PUBLIC_SUFFIX}", own / f"{name}{PUBLIC_SUFFIX}",
            own / f"{name}{SECRET_SUFFIX}", own / f"{SERVER_NAME}{PUBLIC_SUFFIX}")


def _install(src: Path, dst: Path, secret: bool) -> None:
    atomic_write_bytes(dst, src.read_bytes())  # temp file is created 0600 (mkstemp)
    os.chmod(dst, 0o600 if secret else 0o644)
