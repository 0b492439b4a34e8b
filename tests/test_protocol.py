"""avsslib.protocol: the names every stage shares, defined once."""

from __future__ import annotations

import pandas as pd

from avsslib import protocol


def test_prompt_and_modes_are_the_ones_every_stage_uses():
    import avsslib.labels as labels
    import avsslib.mitigate as mitigate
    import avsslib.results as results

    assert labels.DEFAULT_TEMPLATE is protocol.ANSWER_PROMPT is mitigate.PROMPT
    assert mitigate.MODES is protocol.MODES
    assert results.MODES == tuple(m for m in protocol.MODES if m != "probe")


def test_configuration_kinds():
    name = protocol.sweep_config("avss", 0.25)
    assert name == "sweep-avss-0.25"
    assert [protocol.config_kind(n) for n in ("original", name, "faithful-avss-count")] == [
        "original",
        "sweep",
        "main",
    ]
    mask = protocol.is_sweep(pd.Series(["original", name, "avss-count"]))
    assert mask.tolist() == [False, True, False]
    assert protocol.is_sweep(name) and not protocol.is_sweep("avss-mass")
