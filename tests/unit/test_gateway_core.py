"""core.py (the Gateway): readiness of its dependencies."""
from __future__ import annotations

from .gateway_fakes import FakeEmbedder, make_gateway


def test_an_embedder_coming_back_is_ready_only_once_its_worker_answers(tmp_path):
    """A restarted TorchServe answers Ping "Healthy" while its model still loads (requests would queue until
    their deadline): readiness also asks for an answer from the worker, on the way (back) up only."""
    class Loading(FakeEmbedder):
        loaded, probes = False, 0

        def model_ready(self, timeout=1.0):
            self.probes += 1
            return self.loaded

    embedder = Loading()
    gateway = make_gateway(tmp_path, embedder=embedder)
    assert gateway.dependencies(timeout=0.5).embedder is False
    embedder.loaded = True
    assert gateway.dependencies(timeout=0.5).embedder is True
    gateway.dependencies(timeout=0.5)
    assert embedder.probes == 2  # not probed again while it stays up
