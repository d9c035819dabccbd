from synthetic_sets import synthetic_set  # noqa: F401  (the fixture, for this folder)
