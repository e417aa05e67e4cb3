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
