"""The distributed path: the same study trained by 2 CPU processes over gloo (torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study(tmp: Path, base: Path) -> Path:
    toml = f"""
name = "ddp"
base_model = "{base}"
[sources.math]
path = "{EXAMPLES / 'tiny_gsm8k.jsonl'}"
format = "gsm8k"
count = 16
[sources.general]
path = "{EXAMPLES / 'tiny_sharegpt.json'}"
format = "sharegpt"
count = 16
[grid]
strategies = ["sequential"]
order = ["math", "general"]
[train]
epochs = 1
max_steps = 2
batch_size = 2
lr = 1e-3
dtype = "fp32"
max_length = 192
logging_steps = 1
[eval]
suites = ["gsm8k"]
"""
    (tmp / "ddp.toml").write_text(toml)
    return tmp / "ddp.toml"


@pytest.mark.slow  # ~70 s on 2 cores: two torch processes start and train two stages
def test_two_process_gloo_training(tmp_path):
    pytest.importorskip("torch")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.train.study import load_sources, load_study
    from harness.train.tiny import build_tiny_llama, conversation_texts

    study_file = _study(tmp_path, tmp_path / "base")
    texts = conversation_texts([c for v in load_sources(load_study(str(study_file))).values() for c in v])
    build_tiny_llama(tmp_path / "base", texts)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SFT_HARNESS_CACHE": str(tmp_path / "c")}
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "harness.train.study", str(study_file), "--train-only", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out" / "checkpoints").glob("*/manifest.json")]
    assert sorted(m["stage_index"] for m in manifests) == [0, 1]
    assert all(m["world_size"] == 2 and m["steps"] == 2 for m in manifests)
    assert "step 2/2 | loss" in proc.stderr
    # both ranks consumed data: tokens counted across the 2 processes
    assert all(m["tokens_seen"] > 0 for m in manifests)
