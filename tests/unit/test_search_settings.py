"""SearchSettings: defaults, engine selection and validation messages that name the env var."""
from __future__ import annotations

import pytest

from lookalike.settings import ConfigError, load_settings
from lookalike_search.settings import SearchSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os
    for key in list(os.environ):
        if key.startswith("LOOKALIKE_SEARCH_"):
            monkeypatch.delenv(key)


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_SEARCH_DATA_DIR", str(tmp_path))
    s = load_settings(SearchSettings)
    assert (s.host, s.port, s.engine, s.collection, s.vector_size) == ("127.0.0.1", 50052, "qdrant-edge",
                                                                      "products", 1280)
    assert s.edge_index_threshold_points == 20_000
    assert s.quantization == "none" and s.qdrant_url is None and s.bind_address == "127.0.0.1:50052"


def test_a_data_dir_with_only_qdrant_local_data_keeps_its_engine(monkeypatch, tmp_path):
    """qdrant-edge became the default; a catalogue indexed before must not silently vanish."""
    monkeypatch.setenv("LOOKALIKE_SEARCH_DATA_DIR", str(tmp_path))
    (tmp_path / "qdrant-local").mkdir()
    assert load_settings(SearchSettings).engine == "qdrant-local"
    (tmp_path / "qdrant-edge").mkdir()
    assert load_settings(SearchSettings).engine == "qdrant-edge"
    monkeypatch.setenv("LOOKALIKE_SEARCH_ENGINE", "qdrant-local")
    assert load_settings(SearchSettings).engine == "qdrant-local"  # an explicit choice wins


def test_url_makes_server_the_default_engine(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SEARCH_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LOOKALIKE_SEARCH_QDRANT_API_KEY", "secret")
    s = load_settings(SearchSettings)
    assert s.engine == "qdrant-server" and s.qdrant_api_key.get_secret_value() == "secret"
    assert "secret" not in repr(s)


@pytest.mark.parametrize("env, name, text", [
    ({"LOOKALIKE_SEARCH_PORT": "notaport"}, "LOOKALIKE_SEARCH_PORT", "integer"),
    ({"LOOKALIKE_SEARCH_PORT": "70000"}, "LOOKALIKE_SEARCH_PORT", "65535"),
    ({"LOOKALIKE_SEARCH_ENGINE": "faiss"}, "LOOKALIKE_SEARCH_ENGINE", "qdrant-edge"),
    ({"LOOKALIKE_SEARCH_ENGINE": "qdrant-server"}, "LOOKALIKE_SEARCH_ENGINE", "needs LOOKALIKE_SEARCH_QDRANT_URL"),
    ({"LOOKALIKE_SEARCH_ENGINE": "qdrant-edge", "LOOKALIKE_SEARCH_QDRANT_URL": "http://q:6333"},
     "LOOKALIKE_SEARCH_ENGINE", "unset one"),
    ({"LOOKALIKE_SEARCH_QDRANT_URL": "qdrant:6333"}, "LOOKALIKE_SEARCH_QDRANT_URL", "http://"),
    ({"LOOKALIKE_SEARCH_QUANTIZATION": "pq"}, "LOOKALIKE_SEARCH_QUANTIZATION", "int8"),
    ({"LOOKALIKE_SEARCH_VECTOR_SIZE": "0"}, "LOOKALIKE_SEARCH_VECTOR_SIZE", "greater than or equal to 1"),
    ({"LOOKALIKE_SEARCH_COLLECTION": "a/b"}, "LOOKALIKE_SEARCH_COLLECTION", "pattern"),
    ({"LOOKALIKE_SEARCH_REPLICATION_FACTOR": "2", "LOOKALIKE_SEARCH_WRITE_CONSISTENCY_FACTOR": "3"},
     "LOOKALIKE_SEARCH_WRITE_CONSISTENCY_FACTOR", "REPLICATION_FACTOR"),
    ({"LOOKALIKE_SEARCH_LOG_LEVEL": "chatty"}, "LOOKALIKE_SEARCH_LOG_LEVEL", "INFO"),
])
def test_invalid_values_name_the_env_var(monkeypatch, capsys, env, name, text):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings(SearchSettings)
    line = next(ln for ln in str(err.value).splitlines() if name + ":" in ln)
    assert text in line
    assert name in capsys.readouterr().err


def test_log_level_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SEARCH_LOG_LEVEL", "debug")
    assert load_settings(SearchSettings).log_level == "DEBUG"
