"""A real TorchServe with an invalid embedder setting: the worker does not load the model, and the model log
names the setting (its variable and its model-config.yaml key), as EmbedderSettings promises."""
from __future__ import annotations

import time

from lookalike.torchserve_process import TorchServeProcess

NEEDLE = "LOOKALIKE_EMBEDDER_THREADS / handler.threads: Input should be greater than or equal to 0 (got '-1')"


def test_a_bad_setting_stops_the_worker_naming_it(tmp_path_factory):
    ts = TorchServeProcess(tmp_path_factory.mktemp("tsbad"), startup_timeout=120,
                           env={"LOOKALIKE_EMBEDDER_THREADS": "-1"})
    ts.start(wait=False)
    model_log = ts.log_dir / "model_log.log"
    try:
        deadline = time.monotonic() + 120
        while not (model_log.is_file() and NEEDLE in model_log.read_text(errors="replace")):
            assert ts.proc.poll() is None, f"TorchServe itself exited\n{ts.log_tail()}"
            assert time.monotonic() < deadline, f"no message naming the setting\n{ts.log_tail()}"
            time.sleep(0.25)
        text = model_log.read_text(errors="replace")
        assert "invalid configuration for EmbedderSettings" in text
        assert "lookalike embedder ready" not in text  # the worker never loaded the model
    finally:
        ts.stop()
    assert ts.group_pids() == []
