"""Automatic interpretation: explain each SAE feature and score the explanation.

explainers.py  turn a feature's evidence (example windows, what it promotes) into a
               short text: `offline` (no LLM: what it fires on and makes more likely),
               `patchscope` (patchscope.py: the SAE's own model decodes the direction) or
               `llm` (any OpenAI-compatible endpoint)
scorers.py     no-judge scorers: embedding (AUROC of held-out windows ranked by cosine to
               the explanation) and activation (SASC as an AUROC: does text found by the
               explanation make the feature fire more than random text?)
judge.py       judge-LLM scorers in delphi's style: detection and fuzzing
pool.py        the scoring windows: contexts not used to explain, run through the model
               and the SAE once per job
checks.py      whether the scores mean anything: own explanation vs the nearest decoder
               neighbour's (`own_vs_neighbour_auroc`), all scores in [0, 1]
Every score is in [0, 1], 0.5 = chance (storage/catalog/explanations.SCORE_MEANINGS).
workers/explain.py runs it all as a Ray job and writes to the catalog.
"""
