"""Automatic interpretation: explain each SAE feature and score the explanation.

explainers.py  turn a feature's evidence (example windows, vocabulary projection) into a
               short text: `offline` (no LLM) or `llm` (any OpenAI-compatible endpoint)
scorers.py     no-judge scorers: embedding (AUROC of held-out windows ranked by cosine to
               the explanation) and activation (SASC: does text found by the explanation
               make the feature fire?)
judge.py       judge-LLM scorers in delphi's style: detection and fuzzing
pool.py        the scoring windows: contexts not used to explain, run through the model
               and the SAE once per job
workers/explain.py runs it all as a Ray job and writes to the catalog.
"""
