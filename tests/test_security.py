"""CURVE on the transport sockets (hilrl.transport.security) with real zmq sockets on 127.0.0.1:
authorised actors get through on DEALER/ROUTER and PUB/SUB, a wrong own key or a wrong server
key gets nothing through either way; bind-address checks; key loading errors; ``hilrl keys``."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import AuthenticationThread
from zmq.utils.monitor import recv_monitor_message

from hilrl.cli import main
from hilrl.transport.security import (
    ClientKeys,
    KeyFileError,
    ServerKeys,
    check_bind_address,
    generate_keys,
    is_local_address,
    load_client_keys,
    load_server_keys,
    secure_client_socket,
    secure_server_socket,
    stop_authenticator,
)

REPO = Path(__file__).resolve().parents[1]
LOCAL = "tcp://127.0.0.1"
GRACE_MS = 400  # how long "nothing arrives" is watched once the handshake has been refused
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    """Learner + actors "good" and "other"; "other" is then removed from authorized/, so it
    has a perfectly valid key pair that the learner does not accept."""
    out = tmp_path_factory.mktemp("keys") / "keys"
    generate_keys(out, ["good", "other"])
    (out / "authorized" / "other.key").unlink()
    return out


@pytest.fixture(scope="module")
def server_keys(keydir) -> ServerKeys:
    return load_server_keys(keydir)


@pytest.fixture(scope="module")
def good(keydir) -> ClientKeys:
    return load_client_keys(keydir / "actors" / "good")


@pytest.fixture(scope="module")
def unauthorised(keydir) -> ClientKeys:
    return load_client_keys(keydir / "actors" / "other")


@pytest.fixture(scope="module")
def wrong_server(good) -> ClientKeys:
    """The authorised actor's own pair, but it trusts a different learner key."""
    return ClientKeys(good.public, good.secret, zmq.curve_keypair()[0])


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    stop_authenticator(context)
    context.destroy(linger=0)


def socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    s = ctx.socket(kind)
    s.linger = 0
    return s


def recv_within(sock: zmq.Socket, timeout_ms: int) -> list[bytes] | None:
    if sock.poll(timeout_ms, zmq.POLLIN):
        return sock.recv_multipart()
    return None


def wait_event(monitor: zmq.Socket, mask: int, timeout_s: float = 5.0) -> int:
    """The first monitor event in ``mask``; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(int(left * 1000) + 1, zmq.POLLIN):
            event = recv_monitor_message(monitor)["event"]
            if event & mask:
                return event
    pytest.fail(f"no monitor event in {mask:#x} within {timeout_s} s")


def secure_router(ctx, keys: ServerKeys) -> tuple[zmq.Socket, str, zmq.Socket]:
    router = socket(ctx, zmq.ROUTER)
    router.router_mandatory = True  # sending to a peer that is not connected raises
    secure_server_socket(router, keys, ctx)
    monitor = router.get_monitor_socket()
    port = router.bind_to_random_port(LOCAL)
    return router, f"{LOCAL}:{port}", monitor


def dealer(ctx, keys: ClientKeys | None, endpoint: str, identity: bytes) -> zmq.Socket:
    d = socket(ctx, zmq.DEALER)
    d.routing_id = identity
    if keys is not None:
        secure_client_socket(d, keys)
    d.connect(endpoint)
    return d


# ---------------------------------------------------------------------------------------------
# DEALER <-> ROUTER


def test_authorised_dealer_gets_through_both_ways(ctx, server_keys, good):
    router, endpoint, _ = secure_router(ctx, server_keys)
    d = dealer(ctx, good, endpoint, b"good")
    d.send(b"transition")
    frames = recv_within(router, 5000)
    assert frames == [b"good", b"transition"]
    router.send_multipart([b"good", b"ack"])
    assert recv_within(d, 5000) == [b"ack"]


def test_authorised_message_carries_the_actor_key(ctx, server_keys, good):
    """ZAP's User-Id is the actor's z85 public key: the learner can tell who sent what."""
    router, endpoint, _ = secure_router(ctx, server_keys)
    d = dealer(ctx, good, endpoint, b"good")
    d.send(b"x")
    assert router.poll(5000)
    _, body = router.recv_multipart(copy=False)
    assert body.get("User-Id").encode() == good.public


@pytest.mark.parametrize("who", ["unauthorised", "wrong_server", "no_curve"])
def test_bad_dealer_gets_nothing_through(ctx, server_keys, who, request):
    keys = None if who == "no_curve" else request.getfixturevalue(who)
    router, endpoint, monitor = secure_router(ctx, server_keys)
    d = dealer(ctx, keys, endpoint, b"intruder")
    d.send(b"poison")
    wait_event(monitor, HANDSHAKE_FAILED)  # the learner refused it (not merely "not yet")
    assert recv_within(router, GRACE_MS) is None
    with pytest.raises(zmq.ZMQError) as e:  # the learner cannot reach it either
        router.send_multipart([b"intruder", b"weights"], flags=zmq.NOBLOCK)
    assert e.value.errno == zmq.EHOSTUNREACH
    assert recv_within(d, 0) is None


def test_good_actor_is_served_while_a_bad_one_knocks(ctx, server_keys, good, unauthorised):
    router, endpoint, monitor = secure_router(ctx, server_keys)
    bad = dealer(ctx, unauthorised, endpoint, b"bad")
    bad.send(b"poison")
    wait_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    ok = dealer(ctx, good, endpoint, b"good")
    ok.send(b"hello")
    assert recv_within(router, 5000) == [b"good", b"hello"]
    assert recv_within(router, GRACE_MS) is None


# ---------------------------------------------------------------------------------------------
# PUB -> SUB


def test_pub_sub_only_the_authorised_subscriber_receives(ctx, server_keys, good, unauthorised,
                                                         wrong_server):
    pub = socket(ctx, zmq.PUB)
    secure_server_socket(pub, server_keys, ctx)
    monitor = pub.get_monitor_socket()
    endpoint = f"{LOCAL}:{pub.bind_to_random_port(LOCAL)}"
    subs = {}
    for name, keys in [("good", good), ("unauthorised", unauthorised),
                       ("wrong_server", wrong_server), ("no_curve", None)]:
        s = socket(ctx, zmq.SUB)
        s.subscribe(b"")
        if keys is not None:
            secure_client_socket(s, keys)
        s.connect(endpoint)
        subs[name] = s
    for _ in range(3):  # every bad subscriber's handshake was refused at least once
        wait_event(monitor, HANDSHAKE_FAILED)
    # PUB drops messages until a subscriber is connected: publish until the good one hears
    deadline = time.monotonic() + 5
    received = None
    while received is None and time.monotonic() < deadline:
        pub.send_multipart([b"weights", b"v1"])
        received = recv_within(subs["good"], 50)
    assert received == [b"weights", b"v1"]
    for _ in range(5):
        pub.send_multipart([b"weights", b"v2"])
    assert recv_within(subs["good"], 2000) is not None
    for name in ("unauthorised", "wrong_server", "no_curve"):
        assert recv_within(subs[name], GRACE_MS if name == "unauthorised" else 0) is None, name


# ---------------------------------------------------------------------------------------------
# Authenticator lifecycle and misuse


def test_one_authenticator_per_context_and_separate_allow_sets(ctx, server_keys, good,
                                                               unauthorised):
    """Two server sockets on one context with different authorised sets: each accepts only
    its own set (separate ZAP domains), through one authenticator thread."""
    other_only = ServerKeys(server_keys.public, server_keys.secret,
                            frozenset({unauthorised.public}))
    r1, e1, _ = secure_router(ctx, server_keys)
    r2, e2, m2 = secure_router(ctx, other_only)
    threads = [t for t in threading.enumerate() if isinstance(t, AuthenticationThread)]
    assert len(threads) == 1
    d_other = dealer(ctx, unauthorised, e2, b"o")
    d_other.send(b"to r2")
    assert recv_within(r2, 5000) == [b"o", b"to r2"]
    d_good = dealer(ctx, good, e2, b"g")
    d_good.send(b"to r2")
    wait_event(m2, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert recv_within(r2, GRACE_MS) is None
    d_good1 = dealer(ctx, good, e1, b"g")
    d_good1.send(b"to r1")
    assert recv_within(r1, 5000) == [b"g", b"to r1"]


def wait_zap_endpoint_free(ctx: zmq.Context, timeout_s: float = 5.0) -> None:
    """libzmq unregisters a closed socket's inproc endpoint asynchronously."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probe = socket(ctx, zmq.REP)
        try:
            probe.bind("inproc://zeromq.zap.01")
            return
        except zmq.ZMQError:
            time.sleep(0.01)
        finally:
            probe.close()
    pytest.fail("the ZAP endpoint stayed bound after stop_authenticator")


def test_stop_authenticator_fails_closed_and_is_idempotent(server_keys, good):
    ctx = zmq.Context()
    try:
        router, endpoint, monitor = secure_router(ctx, server_keys)
        stop_authenticator(ctx)
        stop_authenticator(ctx)
        wait_zap_endpoint_free(ctx)
        # with no ZAP handler left, libzmq must refuse rather than let anyone in (its legacy
        # default is CURVE encryption with any client key accepted)
        d = dealer(ctx, good, endpoint, b"good")
        d.send(b"late")
        assert recv_within(router, GRACE_MS) is None
    finally:
        stop_authenticator(ctx)
        ctx.destroy(linger=0)


def test_security_must_be_set_before_bind_or_connect(ctx, server_keys, good):
    router = socket(ctx, zmq.ROUTER)
    port = router.bind_to_random_port(LOCAL)
    with pytest.raises(ValueError, match="before bind"):
        secure_server_socket(router, server_keys, ctx)
    d = socket(ctx, zmq.DEALER)
    d.connect(f"{LOCAL}:{port}")
    with pytest.raises(ValueError, match="before connect"):
        secure_client_socket(d, good)


def test_socket_of_another_context_is_refused(ctx, server_keys):
    other = zmq.Context()
    try:
        s = other.socket(zmq.ROUTER)
        with pytest.raises(ValueError, match="another context"):
            secure_server_socket(s, server_keys, ctx)
        s.close(linger=0)
    finally:
        other.term()


def test_keys_never_show_their_secret_in_repr(server_keys, good):
    assert server_keys.secret.decode() not in repr(server_keys)
    assert good.secret.decode() not in repr(good)


# ---------------------------------------------------------------------------------------------
# Bind addresses


@pytest.mark.parametrize("address", [
    "tcp://127.0.0.1:5555", "tcp://127.1.2.3:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
    "tcp://[::ffff:127.0.0.1]:5555", "tcp://127.0.0.1:*", "ipc:///tmp/hilrl.sock",
    "inproc://learner", "TCP://LOCALHOST:1",
])
def test_local_addresses_need_no_keys(address):
    assert is_local_address(address)
    check_bind_address(address, None, insecure=False)


@pytest.mark.parametrize("address", [
    "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555", "tcp://10.0.0.1:5555",
    "tcp://[::]:5555", "tcp://eth0:5555", "tcp://learner.lab:5555", "ws://127.0.0.1:5555",
    "tcp://[2001:db8::1]:5555",
])
def test_public_addresses_need_keys_or_insecure(address, server_keys, caplog):
    assert not is_local_address(address)
    with pytest.raises(ValueError, match="hilrl keys") as e:
        check_bind_address(address, None, insecure=False)
    assert "--insecure" in str(e.value)
    check_bind_address(address, server_keys, insecure=False)
    with caplog.at_level(logging.WARNING, logger="hilrl.transport.security"):
        check_bind_address(address, None, insecure=True)
    assert "INSECURE" in caplog.text and address in caplog.text


def test_not_an_endpoint():
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        check_bind_address("127.0.0.1:5555", None, insecure=False)


# ---------------------------------------------------------------------------------------------
# Loading errors


@pytest.fixture
def keys_copy(keydir, tmp_path) -> Path:
    return Path(shutil.copytree(keydir, tmp_path / "keys"))


def test_load_server_keys_errors(keys_copy, tmp_path):
    with pytest.raises(KeyFileError, match="does not exist.*hilrl keys"):
        load_server_keys(tmp_path / "nowhere")

    secret = keys_copy / "learner.key_secret"
    secret.chmod(0o644)
    with pytest.raises(ValueError, match=f"chmod 600 {secret}"):
        load_server_keys(keys_copy)
    secret.chmod(0o640)  # group-readable is not private either
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_server_keys(keys_copy)
    secret.chmod(0o600)
    load_server_keys(keys_copy)

    (keys_copy / "authorized" / "good.key").unlink()
    with pytest.raises(KeyFileError, match="no authorised actor keys"):
        load_server_keys(keys_copy)
    shutil.rmtree(keys_copy / "authorized")
    with pytest.raises(KeyFileError, match="authorised actor keys .* is missing"):
        load_server_keys(keys_copy)

    secret.unlink()
    with pytest.raises(KeyFileError, match="learner.key_secret is missing.*hilrl keys"):
        load_server_keys(keys_copy)


def test_load_rejects_damaged_or_mixed_up_files(keys_copy):
    secret = keys_copy / "learner.key_secret"
    original = secret.read_text()
    other_public = (keys_copy / "authorized" / "good.key").read_text()
    learner_public = zmq.auth.load_certificate(secret)[0].decode()
    good_public = zmq.auth.load_certificate(keys_copy / "authorized" / "good.key")[0].decode()
    secret.write_text(original.replace(learner_public, good_public))
    with pytest.raises(KeyFileError, match="does not belong"):
        load_server_keys(keys_copy)
    secret.write_text(other_public)  # a public certificate where the secret one belongs
    with pytest.raises(KeyFileError, match="no secret-key"):
        load_server_keys(keys_copy)
    secret.write_text("nothing useful\n")
    with pytest.raises(KeyFileError, match="not a ZeroMQ certificate"):
        load_server_keys(keys_copy)
    secret.write_text(original)
    (keys_copy / "authorized" / "good.key").write_text('curve\n    public-key = "short"\n')
    with pytest.raises(KeyFileError, match="z85"):
        load_server_keys(keys_copy)


NOBODY = 65534


def _in_a_child_as_nobody(check) -> None:
    """Run ``check()`` in a forked child whose user is nobody: root reads any file, so only
    an unprivileged user meets the refusal the check is about. Fails with what the child
    raised. (A fork, not a new interpreter: the child needs no access to the code.)"""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork() in a threaded process (pytest-timeout's watchdog, JAX's
        # pools). The child takes no lock those threads might hold: it reads files, then _exits.
        warnings.filterwarnings("ignore", r".*use of fork\(\) may lead to deadlocks",
                                DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(write, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"as nobody: {said}"


def test_unreadable_secret_is_reported(keys_copy, tmp_path):
    """A secret key file its user may not read: the message says so. As root (CI), the same
    check runs as nobody on a copy nobody owns, since root would read the file anyway."""
    keys = keys_copy
    if os.geteuid() == 0:
        # tmp_path's parents are root's and private: a directory nobody can reach and own.
        reachable = Path(tempfile.mkdtemp(prefix="hilrl-nobody-"))
        keys = Path(shutil.copytree(keys_copy, reachable / "keys"))
        for path in [keys.parent, keys, *keys.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    secret = keys / "learner.key_secret"
    secret.chmod(0o000)

    def check() -> None:
        with pytest.raises(KeyFileError, match="cannot read"):
            load_server_keys(keys)
        assert secret.stat().st_mode & 0o777 == 0  # still there, just not readable

    try:
        if os.geteuid() == 0:
            _in_a_child_as_nobody(check)
        else:
            check()
    finally:
        if keys is not keys_copy:
            shutil.rmtree(keys.parent, ignore_errors=True)


def test_load_client_keys_errors(keys_copy, tmp_path):
    actor = keys_copy / "actors" / "good"
    assert load_client_keys(actor).public == load_client_keys(
        actor, actor / "learner.key").public

    with pytest.raises(KeyFileError, match="learner's directory.*actors"):
        load_client_keys(keys_copy)
    with pytest.raises(KeyFileError, match="secret key file"):
        load_client_keys(actor, keys_copy / "learner.key_secret")

    (actor / "good.key_secret").chmod(0o604)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_client_keys(actor)
    (actor / "good.key_secret").chmod(0o600)

    shutil.copy2(keys_copy / "actors" / "other" / "other.key_secret", actor)
    with pytest.raises(KeyFileError, match="several actor secret keys"):
        load_client_keys(actor)
    (actor / "other.key_secret").unlink()

    (actor / "learner.key").unlink()
    with pytest.raises(KeyFileError, match="learner.key is missing"):
        load_client_keys(actor)
    (actor / "good.key_secret").unlink()
    with pytest.raises(KeyFileError, match="no actor secret key"):
        load_client_keys(actor)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_client_keys(tmp_path / "nowhere")


def test_secret_key_in_authorized_dir_is_warned_about(keys_copy, caplog):
    shutil.copy2(keys_copy / "actors" / "good" / "good.key_secret", keys_copy / "authorized")
    with caplog.at_level(logging.WARNING, logger="hilrl.transport.security"):
        load_server_keys(keys_copy)
    assert "good.key_secret" in caplog.text


# ---------------------------------------------------------------------------------------------
# hilrl keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_hilrl_keys_end_to_end(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out), "--actors", "2"]) == 0
    printed = capsys.readouterr().out
    assert "learner machine" in printed and "robot PC of actor1" in printed

    server = load_server_keys(out)
    clients = {n: load_client_keys(out / "actors" / n) for n in ("actor0", "actor1")}
    assert server.authorized_clients == {c.public for c in clients.values()}
    assert all(c.server_public == server.public for c in clients.values())
    secrets = sorted(out.rglob("*.key_secret"))
    assert [p.name for p in secrets] == ["actor0.key_secret", "actor1.key_secret",
                                         "learner.key_secret"]
    assert all(mode(p) == 0o600 for p in secrets)
    assert all(mode(p) == 0o644 for p in out.rglob("*.key"))
    assert not list(out.glob(".hilrl-keys-*"))  # scratch directory cleaned up

    # refuses to overwrite, and leaves the keys alone
    assert main(["keys", "--out", str(out), "--actor", "actor0"]) == 2
    assert "--force" in capsys.readouterr().err
    assert load_server_keys(out) == server

    assert main(["keys", "--out", str(out), "--actor", "actor0", "--force"]) == 0
    assert "actor1.key is from before and still authorised" in capsys.readouterr().out
    assert load_server_keys(out).public != server.public
    assert load_client_keys(out / "actors" / "actor0").public not in server.authorized_clients


def test_hilrl_keys_named_actors_and_bad_names(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out), "--actor", "franka-left", "--actor", "ur5.1"]) == 0
    assert sorted(p.name for p in (out / "authorized").iterdir()) == ["franka-left.key",
                                                                      "ur5.1.key"]
    for bad in (["--actor", "../x"], ["--actor", "learner"], ["--actor", "a", "--actor", "a"]):
        assert main(["keys", "--out", str(tmp_path / "other"), *bad]) == 2
        assert "hilrl: error:" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    with pytest.raises(SystemExit):  # argparse: --actors and --actor together
        main(["keys", "--out", str(out), "--actors", "2", "--actor", "x"])


def test_hilrl_keys_as_a_real_command(tmp_path, server_keys):
    out = tmp_path / "keys"
    result = subprocess.run([sys.executable, "-m", "hilrl.cli", "keys", "--out", str(out)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "robot PC of actor0" in result.stdout
    assert len(load_server_keys(out).authorized_clients) == 1
    load_client_keys(out / "actors" / "actor0")
