"""Prompts, each with a version id stored beside what it produced: change a prompt's text
and bump its id, so a resumed job re-explains instead of mixing two prompts' outputs.

Modelled on delphi's default explainer (examples with the activating tokens between
<<delimiters>>, the last line `[EXPLANATION]: ...`) and its detection/fuzzing scorers;
the judge here sees one window per request and answers 1 or 0, so a small judge stays in
format and the first answer token's logprobs give P(1) for an AUROC.
"""

from __future__ import annotations

EXPLAIN_VERSION = "explain-v1"
GLOSS_VERSION = "gloss-v1"
DETECTION_VERSION = "detection-v1"
FUZZING_VERSION = "fuzzing-v1"

EXPLAIN_SYSTEM = """You are a meticulous AI researcher investigating patterns in text.
You will see text examples in which the words where a feature of a language model is
active are between delimiters <<like this>>, and the tokens the feature promotes next.
Describe in one short phrase what the marked words have in common. Do not mention the
<< >> markers and do not list several explanations.
The last line of your answer must be: [EXPLANATION]: <your phrase>"""

GLOSS_SYSTEM = """You name what a list of text fragments has in common, in at most six
words. Answer with the words only."""

DETECTION_SYSTEM = """A feature of a language model is active on text that matches this
description. You will see one text. Answer 1 if the feature is active somewhere in it, 0
if not. Answer with the single digit only."""

FUZZING_SYSTEM = """A feature of a language model is active on text that matches this
description. You will see one text in which some words are between <<delimiters>>.
Answer 1 if the marked words are the ones that match the description, 0 if not. Answer
with the single digit only."""


def explain_messages(examples: list[str], promoted: list[str]) -> list[dict[str, str]]:
    lines = [f"Example {i + 1}: {text}" for i, text in enumerate(examples)]
    if promoted:
        lines.append("Tokens it promotes next: " + ", ".join(promoted))
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def gloss_messages(evidence: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": GLOSS_SYSTEM},
        {"role": "user", "content": evidence},
    ]


# Two worked answers before the real question: without them a small judge (SmolLM2-135M)
# continues the text instead of answering; with them it answers a digit.
DETECTION_SHOTS = [
    ("names of animals", "the cat sat on the mat", "1"),
    ("names of animals", "the stock market fell today", "0"),
]
FUZZING_SHOTS = [
    ("names of animals", "the <<cat>> sat on the mat", "1"),
    ("names of animals", "the cat sat <<on>> the mat", "0"),
]


def _question(explanation: str, text: str) -> str:
    return f"Description: {explanation}\nText: {text}\nAnswer:"


def judge_messages(
    system: str, explanation: str, text: str, shots: list[tuple[str, str, str]]
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for shot_explanation, shot_text, answer in shots:
        messages += [
            {"role": "user", "content": _question(shot_explanation, shot_text)},
            {"role": "assistant", "content": answer},
        ]
    return messages + [{"role": "user", "content": _question(explanation, text)}]
