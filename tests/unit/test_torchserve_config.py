"""What the TorchServe launcher writes before it starts anything (lookalike.torchserve_config,
lookalike.torchserve_process): the per-run config.properties and the archives it registers. No server."""
from __future__ import annotations

from lookalike.torchserve_config import default_config_template, read_properties, render_properties
from lookalike.torchserve_process import TorchServeProcess


def test_render_properties_replaces_ports_and_keeps_the_rest(tmp_path):
    template = default_config_template()
    shipped = read_properties(template)
    assert shipped["management_address"].startswith("http://127.0.0.1:")
    assert shipped["grpc_management_address"] == "127.0.0.1"
    assert shipped["enable_model_api"] == "false"
    assert "disable_token_authorization" not in shipped
    out = tmp_path / "config.properties"
    out.write_text(render_properties(template, {"grpc_inference_port": 1234, "new_key": "x",
                                                "job_queue_size": None}))
    rendered = read_properties(out)
    assert rendered["grpc_inference_port"] == "1234" and rendered["new_key"] == "x"
    assert "job_queue_size" not in rendered
    assert rendered["load_models"] == shipped["load_models"]


def test_launcher_registers_every_archive_of_the_store_default_first(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for name in ("lookalike-lite0.zz.mar", "lookalike-lite0.mar", "lookalike-lite0.lite1.mar", "other.mar"):
        (store / name).write_bytes(b"")
    process = TorchServeProcess(tmp_path / "ts", store)
    # TorchServe makes the first version it registers the model's default: the default archive comes first
    assert process.archives() == ["lookalike-lite0.mar", "lookalike-lite0.lite1.mar", "lookalike-lite0.zz.mar"]
    process.data_dir.mkdir()
    assert read_properties(process.write_config())["load_models"] == (
        "lookalike-lite0.mar,lookalike-lite0.lite1.mar,lookalike-lite0.zz.mar")
    assert TorchServeProcess(tmp_path / "ts2", store, archive="lookalike-lite0.lite1.mar").archives() == [
        "lookalike-lite0.lite1.mar"]
