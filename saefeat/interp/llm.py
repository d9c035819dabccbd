"""A client for any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp's server,
a hosted API): POST {base_url}/chat/completions over httpx, with a timeout.

Every failure is an LLMError whose message says what went wrong with which endpoint, so
the explain job can record it against the one feature and go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import httpx

from saefeat.config import Settings
from saefeat.errors import SaefeatError, SpecError


class LLMError(SaefeatError):
    """The endpoint could not be reached, refused, or answered something unusable."""


@dataclass
class TokenChoice:
    token: str
    # The endpoint's top alternatives at this position: token -> log probability.
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class ChatAnswer:
    text: str
    tokens: list[TokenChoice] | None  # None when the endpoint returned no logprobs


class LLMClient:
    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient | None:
        """The configured endpoint, or None when SAEFEAT_LLM_BASE_URL is unset."""
        if not settings.llm_base_url:
            return None
        if not settings.llm_model:
            raise SpecError(
                "SAEFEAT_LLM_BASE_URL is set but SAEFEAT_LLM_MODEL is not; name the model "
                "the endpoint serves",
                field="llm_model",
            )
        return cls(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            settings.llm_timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 64,
        logprobs: bool = False,
        top_logprobs: int = 5,
    ) -> ChatAnswer:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": top_logprobs}
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._http.post(url, json=body)
        except httpx.HTTPError as e:
            raise LLMError(f"cannot reach the LLM endpoint {url}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise LLMError(
                f"the LLM endpoint {url} answered HTTP {response.status_code}: "
                f"{response.text[:200]!r}"
            )
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LLMError(
                f"the LLM endpoint {url} answered something that is not a chat completion: "
                f"{response.text[:200]!r}"
            ) from e
        return ChatAnswer(text, _token_choices(choice.get("logprobs")))


def _token_choices(logprobs: Any) -> list[TokenChoice] | None:
    """OpenAI's `choices[0].logprobs.content`: [{token, logprob, top_logprobs: [...]}]."""
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
        return None
    out = []
    for item in logprobs["content"]:
        top = {}
        for alt in item.get("top_logprobs") or []:
            lp = alt.get("logprob")
            if isinstance(lp, int | float) and math.isfinite(lp):
                top[str(alt.get("token", ""))] = float(lp)
        out.append(TokenChoice(str(item.get("token", "")), top))
    return out
