"""A real OpenAI-compatible server for the LLM paths: llama.cpp's server
(`llama-cpp-python[server]`, the `llm` extra) serving the embedded SmolLM2-135M GGUF."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.ports import free_port


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> str:
    """Base URL (…/v1) of a llama.cpp server on 127.0.0.1; stopped after the session."""
    pytest.importorskip("llama_cpp.server", reason="install the `llm` extra")
    from saefeat.lm import embedded_model_file

    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # logits_all: the judge scorers read the answer token's top logprobs.
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_file()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--logits_all", "true"]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        while True:  # up until it answers or dies; no deadline (the machine may be busy)
            if server.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
