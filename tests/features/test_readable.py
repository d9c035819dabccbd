"""The demo's choice of readable features: concentrated, mid-density, never a sink."""

from types import SimpleNamespace as NS

from saefeat.features.readable import pick_readable


def _ex(token: str, position: int = 5):
    return NS(kind="top", position=position, focus=1, token_strs=["a", token, "b"])


def test_picks_concentrated_features_and_never_a_sink():
    features = [NS(index=i, density=0.01, max_activation=1.0) for i in range(6)]
    features.append(NS(index=7, density=0.01, max_activation=1.0))  # newlines: noise
    features.append(NS(index=6, density=0.01, max_activation=20.0))  # a sink's max
    examples = {
        0: [_ex(" def")] * 4 + [_ex("x")],
        1: [_ex(" if")] * 3 + [_ex("x"), _ex("y")],
        2: [_ex("a"), _ex("b"), _ex("c"), _ex("d")],  # diffuse: no concentration
        3: [_ex(" def")] * 5,  # the same token as feature 0: one of them only
        4: [_ex("import", position=1)] * 5,  # its top examples sit after BOS
        5: [_ex("return")] * 5,
        6: [_ex("<|im_start|>")] * 5,
        7: [_ex("\n")] * 5,
    }
    picks = pick_readable(features, lambda f: examples[f.index], n=5)
    assert [c.feature.index for c in picks] == [3, 5, 1]
    assert picks[0].top_token == "def" and picks[0].mass == 1.0
