"""Fast tests of the figure style (avsslib.plots) and the model inspection helpers
(avsslib.inspect) on a tiny random Llama."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from avsslib import plots  # noqa: E402
from avsslib.inspect import describe_layers, residual_rms  # noqa: E402


def test_use_style_sets_colorblind_cycle():
    plots.use_style(dpi=90)
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    assert tuple(matplotlib.colors.to_rgb(cycle[0])) == pytest.approx(plots.colors(1)[0])
    assert matplotlib.rcParams["figure.dpi"] == 90


def test_layer_profile_and_bars_label_axes():
    plots.use_style()
    fig, (a, b) = plt.subplots(1, 2)
    plots.layer_profile(a, [3.0, 1.0, 2.0], label="x", ylabel="value (a.u.)")
    plots.bar_layers(
        b,
        np.array([1.0, 2.0, 3.0, 4.0]),
        "score",
        highlight=[1, 3],
        label="kept",
        highlight_label="pruned",
    )
    assert a.get_ylabel() == "value (a.u.)" and "layer" in a.get_xlabel()
    np.testing.assert_array_equal(a.lines[0].get_ydata(), [3.0, 1.0, 2.0])
    bars = b.patches
    assert len(bars) == 4
    hatched = sorted(round(p.get_x() + p.get_width() / 2) for p in bars if p.get_hatch())
    assert hatched == [1, 3]
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["kept", "pruned"]
    plt.close(fig)


def test_bar_layers_rejects_bad_input():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="outside"):
        plots.bar_layers(ax, [1.0, 2.0], highlight=[2])
    with pytest.raises(ValueError, match="1-D"):
        plots.layer_profile(ax, np.zeros((2, 2)))
    plt.close(fig)


def test_save_writes_png_atomically(tmp_path):
    fig, ax = plt.subplots()
    plots.layer_profile(ax, [1.0, 2.0])
    out = plots.save(fig, tmp_path / "sub" / "fig.png")
    plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["fig.png"]  # no temporary left behind


def test_describe_layers_counts_parameters(tiny_llama):
    table = describe_layers(tiny_llama)
    assert list(table.index) == [0, 1, 2, 3]
    assert set(table["module"]) == {"LlamaDecoderLayer"}
    assert (table["hidden_size"] == 32).all()
    block = tiny_llama.model.layers[2]
    assert table.loc[2, "parameters"] == sum(p.numel() for p in block.parameters())
    expected = torch.cat([p.detach().flatten() for p in block.parameters()]).norm().item()
    assert table.loc[2, "weight_norm"] == pytest.approx(expected, rel=1e-6)


def test_residual_rms_matches_hidden_states(tiny_llama):
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    rms = residual_rms(tiny_llama, ids)
    assert rms.shape == (4, 2, 7)
    with torch.no_grad():
        hidden = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is block l's output (the last entry may include the final norm)
    for layer in range(3):
        expected = hidden[layer + 1].double().pow(2).mean(-1).sqrt().numpy()
        np.testing.assert_allclose(rms[layer], expected, rtol=1e-5)
    assert tiny_llama.training is False


def test_table_style_and_layer_list():
    import pandas as pd

    frame = pd.DataFrame({"a": [0.123456, 2.0], "b": ["x", "y"]})
    html = plots.table(frame, index=False)._repr_html_()
    assert 'class="dataframe"' in html and "0.123" in html and "0.123456" not in html
    assert "row0" in plots.table(frame.style)._repr_html_()  # a Styler keeps its formats
    assert ">0.1<" in plots.table(frame, a="{:.1f}")._repr_html_()
    assert plots.layer_list([3, 7, 11]) == "3, 7, 11" and plots.layer_list([]) == "none"
