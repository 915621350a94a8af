"""``python -m harness.sandbox``: which isolation this machine gets, and two programs' verdicts."""

import json
import logging

from harness.sandbox import Program, Sandbox

logging.basicConfig(level=logging.INFO)
with Sandbox(workers=1) as box:
    ok = box.run(Program("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f"))
    bad = box.run(Program("import sys\ndef f():\n    sys.exit(0)\n", "def check(c):\n    assert c() == 1\n", "f"))
    print(json.dumps({"isolation": box.isolation, "ok": ok.text, "exit0": bad.text}))
