"""SIGTERM while the models load stops the server promptly, with status 0."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

from tests.helpers.servers import free_port, server_env

COPIES = 1000  # each loads in a few milliseconds: seconds of start-up in all
DEADLINE_S = 60.0  # bounds every wait, so a broken start-up fails instead of hanging


def test_sigterm_during_loading_stops_the_server(tmp_path, shipped_dir):
    folder = tmp_path / "models"
    folder.mkdir()
    source = shipped_dir / "digits-cnn.joblib"
    for index in range(COPIES):  # one name: every copy after the first is loaded, then skipped
        shutil.copyfile(source, folder / f"copy-{index:04d}.joblib")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(free_port()), "--model-dir",
             str(folder)], stdout=log_file, stderr=subprocess.STDOUT, env=server_env(),
            cwd=tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while "loaded model digits-cnn" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no model was loaded in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        status = process.wait(DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    assert status == 0, log
    assert "left unloaded" in log, log
    skipped = log.count("is already loaded")
    assert skipped < COPIES - 1, "the server loaded every file before it stopped"
