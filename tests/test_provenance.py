"""tools/provenance.py: every benchmark's raw output says what made it (command, commit, machine,
stack), so a figure in docs/ can be traced to a rerunnable command."""

import json
import re
import subprocess
import sys

from tests.distributed.conftest import REPO


def test_a_tool_run_as_a_script_writes_its_provenance_beside_its_output(tmp_path):
    probe = "import sys; from provenance import write_provenance; write_provenance(sys.argv[1], ['bench.py', '--x'])"
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], cwd=REPO / "tools", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "provenance.json").read_text())
    assert written["command"].endswith("bench.py --x")
    assert re.fullmatch(r"[0-9a-f]{40}", written["code"]["commit"]) and isinstance(written["code"]["dirty"], bool)
    assert written["machine"]["cores"] >= 1 and written["machine"]["memory_gib"] > 0
    assert written["stack"]["torch"].startswith("2.13") and written["measured"]


def test_a_command_run_under_it_gets_its_provenance_only_when_it_succeeds(tmp_path):
    wrapper = [sys.executable, "tools/provenance.py"]
    made = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('42')", str(tmp_path / "out" / "x")]
    (tmp_path / "out").mkdir()
    done = subprocess.run([*wrapper, str(tmp_path / "out"), "--", *made], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert written["command"].startswith(sys.executable) and written["command"].endswith(str(tmp_path / "out" / "x"))
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    done = subprocess.run([*wrapper, str(tmp_path / "failed"), "--", *failing], cwd=REPO, capture_output=True)
    assert done.returncode == 3 and not (tmp_path / "failed").exists(), "a failed command's figures trace to nothing"
    done = subprocess.run([*wrapper, str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
