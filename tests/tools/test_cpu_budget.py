"""tools/cpu_budget.py: a command is stopped at a CPU budget counted over its whole process tree."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A stand-in for a training: writes a complete checkpoint, then idles while a child process it
# started burns CPU (so only the tree's CPU can reach the budget); on SIGTERM it writes one more
# checkpoint, reaps the child and exits 143, as medvol's trainer does. It gives up after 20 s wall.
TRAINER = textwrap.dedent("""
    import signal, subprocess, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def ckpt(i):
        (out / f"ckpt_{i:07d}.pt").write_bytes(b"x")
        (out / f"ckpt_{i:07d}.pt.sha256").write_text("x", encoding="utf-8")
    ckpt(10)
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    def stop(*_):
        ckpt(20)
        child.kill()
        child.wait()
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    time.sleep(20)
    child.kill()
    child.wait()
    sys.exit(3)
""")


def test_budget_stops_the_tree_and_logs_checkpoints(cpu_budget, tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "ckpt_0000001.pt").write_bytes(b"old")  # there before the start: not logged
    (ckpts / "ckpt_0000001.pt.sha256").write_text("old", encoding="utf-8")
    (ckpts / "ckpt_0000005.pt").write_bytes(b"incomplete")  # no sidecar: never logged
    out = tmp_path / "cpu.json"
    rc = cpu_budget.main(["--budget", "0.6", "--watch", str(ckpts), "--out", str(out), "--poll", "0.05",
                          "--", sys.executable, "-c", TRAINER, str(ckpts)])
    got = json.loads(out.read_text(encoding="utf-8"))
    assert rc == 0, got
    assert got["stopped_by_budget"] and got["returncode"] == 143
    # The budget was reached by the grandchild alone, and its CPU is in the total (reaped).
    assert 0.6 <= got["cpu_at_stop_signal_s"] <= got["cpu_s"]
    assert got["cpu_s"] == pytest.approx(got["user_s"] + got["sys_s"], abs=0.02)
    assert got["cpu_s"] < 5
    assert [c["iteration"] for c in got["checkpoints"]] == [10, 20]
    first, last = got["checkpoints"]
    assert first["cpu_s"] < 0.6 <= last["cpu_s"] == got["cpu_s"]
    assert got["max_rss_mib"] > 1


def test_without_budget_measures_and_passes_the_exit_status(cpu_budget, tmp_path):
    out = tmp_path / "cpu.json"
    rc = cpu_budget.main(["--out", str(out), "--", sys.executable, "-c",
                          "import sys\nx = sum(range(3_000_000))\nsys.exit(3)"])
    got = json.loads(out.read_text(encoding="utf-8"))
    assert rc == 3 and got["returncode"] == 3 and not got["stopped_by_budget"]
    assert got["cpu_s"] > 0 and got["checkpoints"] == []


def test_refuses_to_overwrite_its_output(cpu_budget, tmp_path):
    out = tmp_path / "cpu.json"
    out.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit):
        cpu_budget.main(["--out", str(out), "--", sys.executable, "-c", "pass"])
    assert out.read_text(encoding="utf-8") == "{}"


def test_tree_cpu_counts_descendants(cpu_budget):
    # A parent that sleeps while its child spins: the tree's CPU grows, the parent's own does not.
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                             "c = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
                             "time.sleep(30)\nc.kill()"])
    try:
        deadline = time.time() + 20
        while cpu_budget.tree_cpu_seconds(proc.pid) < 0.3 and time.time() < deadline:
            time.sleep(0.05)
        assert cpu_budget.tree_cpu_seconds(proc.pid) >= 0.3 > cpu_budget._stat(proc.pid)[1]
    finally:
        for entry in os.listdir("/proc"):  # the spinning child, found by its parent pid
            got = cpu_budget._stat(int(entry)) if entry.isdigit() else None
            if got is not None and got[0] == proc.pid:
                os.kill(int(entry), signal.SIGKILL)
        proc.kill()
        proc.wait()
