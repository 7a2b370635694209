"""The ``proclets`` command: help, version, one-line errors for wrong arguments."""
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "proclets", *args], capture_output=True,
                          text=True, timeout=60)


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0 and "controller" in out.stdout and "runtime" in out.stdout
    assert run("--version").stdout.startswith("proclets, version ")
    assert "--controller" in run("runtime", "--help").stdout
    assert "--listen" in run("controller", "--help").stdout


@pytest.mark.parametrize("args, message", [
    (["controller"], "Missing option '--listen'"),
    (["controller", "--listen", "nonsense"], "--listen"),
    (["runtime", "--controller", "tcp://127.0.0.1:1", "--workers", "0"], "--workers"),
    (["controller", "--listen", "tcp://127.0.0.1:0", "--key-file", "/nonexistent/k"],
     "cannot read"),
    (["runtime", "--controller", "tcp://127.0.0.1:1", "--listen", "tcp://0.0.0.0:0"],
     "--advertise"),
])
def test_wrong_arguments_get_a_clear_error(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("PROCLETS_CLUSTER_KEY", "ab" * 32)
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_runtime_without_a_controller_says_so(tmp_path):
    key = tmp_path / "k"
    key.write_text("ab" * 32)
    out = run("runtime", "--controller", "tcp://127.0.0.1:1", "--orphan-timeout", "0.5",
              "--key-file", str(key))
    assert out.returncode == 1
    assert "cannot register" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("key_text, message", [
    (None, "no cluster key"), ("abcd", "at least 16"), ("", "is empty"),
])
def test_a_cluster_key_is_required_and_checked(tmp_path, monkeypatch, key_text, message):
    monkeypatch.delenv("PROCLETS_CLUSTER_KEY", raising=False)
    args = ["controller", "--listen", "tcp://127.0.0.1:0"]
    if key_text is not None:
        (tmp_path / "k").write_text(key_text)
        args += ["--key-file", str(tmp_path / "k")]
    out = run(*args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_the_advertised_address_takes_the_bound_port():
    from proclets.runtime import advertised
    assert advertised("tcp://0.0.0.0:4100", "10.0.0.2") == "tcp://10.0.0.2:4100"
    assert advertised("tcp://127.0.0.1:4100", None) == "tcp://127.0.0.1:4100"
    assert advertised("tcp://0.0.0.0:4100", "fd00::2") == "tcp://[fd00::2]:4100"
    with pytest.raises(ValueError, match="wildcard"):
        advertised("tcp://0.0.0.0:4100", None)


def test_a_cluster_by_hand_through_the_cli(tmp_path, no_leaked_processes):
    import os
    import signal
    import proclets
    from proclet_samples import Counter
    key = tmp_path / "cluster.key"
    key.write_text(os.urandom(32).hex())
    env = dict(os.environ, PROCLETS_PATH=os.pathsep.join(p for p in sys.path if p))
    procs = []
    try:
        ctl = subprocess.Popen([sys.executable, "-m", "proclets", "controller", "--listen",
                                "tcp://127.0.0.1:0", "--key-file", str(key)],
                               stdout=subprocess.PIPE, text=True, env=env)
        procs.append(ctl)
        address = ctl.stdout.readline().strip()
        for _ in range(2):
            rt = subprocess.Popen([sys.executable, "-m", "proclets", "runtime",
                                   "--controller", address, "--listen", "tcp://0.0.0.0:0",
                                   "--advertise", "127.0.0.1", "--key-file", str(key)],
                                  stdout=subprocess.PIPE, text=True, env=env)
            procs.append(rt)
            assert rt.stdout.readline().startswith("tcp://127.0.0.1:")
        with proclets.Cluster(address, key=bytes.fromhex(key.read_text())) as cluster:
            assert len(cluster.runtimes()) == 2
            ref = cluster.spawn(Counter, 1, on=0)
            cluster.migrate(ref, to=1)
            assert ref.incr(1) == 2
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        stuck = []
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                stuck.append(p.pid)
                p.kill()                     # never leave one behind
                p.wait(10)
            p.stdout.close()
    assert not stuck, f"not stopped by SIGTERM within 10 s: {stuck}"
    assert [p.returncode for p in procs] == [0, 0, 0]
