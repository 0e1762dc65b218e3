"""Start `resume_worker.py` in its own process (shared by the kill -9 tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parent / "resume_worker.py"


def start_worker(mode: str, config) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), mode, json.dumps(config.to_dict())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
