"""Property-based tests (hypothesis) of the loaders and the score functions.

Loaders: whatever bytes a data file holds, every dataset's loader returns records or raises
``DataError`` (nothing else), and well-formed generated files load back exactly. Scores: AVSS,
NAVSS, EAVSS and the selection rules keep their invariants for any positive statistics and
refuse NaN/infinite ones with ``AvssError``/``ConfigError`` instead of returning NaN.
(The JSONL round trip of NQ-open is in ``tests/test_data.py``.)
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from avsslib.data import DATASETS, load_dataset
from avsslib.data.loaders import WIKIQA_COLUMNS, split_articles
from avsslib.eavss import eavss_profile
from avsslib.errors import AvssError, ConfigError, DataError
from avsslib.scores import SparsityClampWarning, avss_values, cumulative, navss
from avsslib.selection import select_layers

PROPS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# ---------------------------------------------------------------- loaders

LOADERS = sorted(DATASETS)


@pytest.fixture(scope="module")
def template(tmp_path_factory, data_dir):
    """Per dataset, a data folder with its default split's files (the first one is overwritten
    by each example; the others, e.g. SciQ's support CSV, stay intact)."""
    roots = {}
    for name in LOADERS:
        spec = DATASETS[name]
        root = tmp_path_factory.mktemp(name)
        for rel in spec.splits[spec.default_split].files[1:]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir / rel, root / rel)
        roots[name] = root
    return roots


def _write_first(root, name, data: bytes):
    spec = DATASETS[name]
    path = root / spec.splits[spec.default_split].files[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _records_or_data_error(name, root):
    try:
        records = load_dataset(name, data_dir=root)
    except DataError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)
        return None
    assert isinstance(records, list)
    return records


@pytest.mark.parametrize("name", LOADERS)
@PROPS
@given(blob=st.binary(max_size=300))
def test_any_bytes_give_records_or_a_data_error(template, name, blob):
    _write_first(template[name], name, blob)
    _records_or_data_error(name, template[name])


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "question",
                    "answer",
                    "id",
                    "qid",
                    "instruction",
                    "value",
                    "aliases",
                    "gold_answer",
                    "question_id",
                    "choices",
                    "labels",
                    "mc1_targets",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("name", ["nq_open", "triviaqa", "sciq", "sciq_mc", "truthfulqa"])
@PROPS
@given(items=st.lists(_JSONISH, max_size=5), as_list=st.booleans())
def test_any_json_gives_records_or_a_data_error(template, name, items, as_list):
    """Valid JSON of any shape (a list, or one value per line) in a JSON loader's file."""
    text = json.dumps(items) if as_list else "\n".join(json.dumps(i) for i in items)
    _write_first(template[name], name, text.encode())
    _records_or_data_error(name, template[name])


_CELL = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)


@PROPS
@given(rows=st.lists(st.tuples(_CELL, st.sampled_from([0, 1])), min_size=1, max_size=12))
def test_sst2_round_trip(template, rows):
    assume(all(s.strip() == s and s for s, _ in rows))
    body = "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)
    _write_first(template["sst2"], "sst2", body.encode())
    records = load_dataset("sst2", data_dir=template["sst2"])
    assert [(r.sentence, r.label) for r in records] == rows


@PROPS
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["Q1", "Q2", "Q3"]), _CELL, st.sampled_from([0, 1])),
        min_size=1,
        max_size=15,
    )
)
def test_wikiqa_round_trip_groups_by_question(template, rows):
    lines = ["\t".join(WIKIQA_COLUMNS)]  # raw TSV, no quoting, as the official files
    lines += [
        f"{qid}\tquestion {qid}\tD\tTitle\tS\t{sentence}\t{label}" for qid, sentence, label in rows
    ]
    _write_first(template["wikiqa"], "wikiqa", ("\n".join(lines) + "\n").encode())
    records = load_dataset("wikiqa", data_dir=template["wikiqa"])
    expected = {}
    for qid, sentence, label in rows:
        expected.setdefault(qid, ([], []))
        expected[qid][0].append(sentence)
        expected[qid][1].append(label)
    assert [r.id for r in records] == list(expected)
    for r in records:
        assert (list(r.sentences), list(r.labels)) == expected[r.id]


@PROPS
@given(
    pieces=st.lists(
        st.tuples(
            st.text(alphabet="abc xyz", min_size=1, max_size=8),
            st.text(alphabet="abc =\n", max_size=30),
        ),
        min_size=1,
        max_size=6,
    ),
    prefix=st.text(alphabet="ab \n", max_size=10),
)
def test_wikitext_articles_join_back_to_the_text(pieces, prefix):
    text = prefix + "".join(f"\n = {t.strip() or 'T'} = \n{body}" for t, body in pieces)
    docs = split_articles(text, "test")
    assert "".join(d.text for d in docs) == text
    assert 1 <= len(docs) <= len(pieces) + text.count("\n")


# ---------------------------------------------------------------- scores

_POS = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
_FRAC = st.floats(min_value=1e-3, max_value=1.0, exclude_max=True)


def _layers(min_size=2, max_size=40):
    return st.integers(min_size, max_size).flatmap(
        lambda m: st.tuples(
            st.lists(_POS, min_size=m, max_size=m), st.lists(_FRAC, min_size=m, max_size=m)
        )
    )


@settings(max_examples=200, deadline=None)
@given(vs=_layers(), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_avss_invariants(vs, scale, seed):
    v, s = map(np.asarray, vs)
    a = avss_values(v, s)
    assert a.shape == v.shape and np.isfinite(a).all() and (a > 0).all()
    np.testing.assert_allclose(avss_values(v * scale, s), a, rtol=1e-9)  # units of V cancel
    np.testing.assert_allclose(avss_values(v, s * min(scale, 0.9)), a, rtol=1e-9)  # and of S
    perm = np.random.default_rng(seed).permutation(v.size)
    np.testing.assert_allclose(avss_values(v[perm], s[perm]), a[perm], rtol=1e-12)
    n = navss(a)
    assert abs(n.sum() - 1) < 1e-9
    c = cumulative(n)
    assert (np.diff(c) >= -1e-12).all() and abs(c[-1] - 1) < 1e-9


@settings(max_examples=200, deadline=None)
@given(
    vs=_layers(),
    where=st.integers(0, 39),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    in_variance=st.booleans(),
)
def test_avss_refuses_non_finite_statistics(vs, where, bad, in_variance):
    v, s = (np.asarray(x, dtype=float) for x in vs)
    target = v if in_variance else s
    target[where % target.size] = bad
    with pytest.raises(AvssError, match=f"layers \\[{where % target.size}"):
        avss_values(v, s)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=40),
    fraction=st.floats(0.01, 0.99),
)
def test_count_rule_picks_the_lowest(values, fraction):
    values = np.asarray(values)
    k = round(fraction * values.size)
    if k >= values.size:
        with pytest.raises(ConfigError, match="prunes every"):
            select_layers(values, fraction, "count")
        return
    chosen = select_layers(values, fraction, "count")
    assert chosen == sorted(set(chosen)) and len(chosen) == k
    assert all(0 <= i < values.size for i in chosen)
    rest = np.delete(values, chosen)
    if chosen and rest.size:
        assert values[chosen].max() <= rest.min()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_POS, min_size=2, max_size=40), fraction=st.floats(0.01, 0.99))
def test_mass_rule_stays_under_the_fraction(values, fraction):
    values = np.asarray(values)
    chosen = select_layers(values, fraction, "mass", score="avss")
    assert chosen == sorted(set(chosen))
    assert values[chosen].sum() / values.sum() <= fraction + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(_POS, min_size=2, max_size=20),
    fraction=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(np.nan)),
)
def test_fraction_outside_the_open_interval_is_refused(values, fraction):
    with pytest.raises(ConfigError, match="fraction"):
        select_layers(values, fraction, "count")


@settings(max_examples=100, deadline=None)
@given(m=st.integers(2, 30), data=st.data(), family=st.sampled_from(["P", "C"]))
def test_eavss_profile_invariants(m, data, family):
    def draw(strategy):
        return np.asarray(data.draw(st.lists(strategy, min_size=m, max_size=m)))

    v_h, v_t, s_h, s_t = draw(_POS), draw(_POS), draw(_FRAC), draw(_FRAC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparsityClampWarning)
        frame = eavss_profile(v_h, s_h, v_t, s_t, family)
    for column in ("eavss_tilde", "avss_t_tilde"):
        assert np.isfinite(frame[column]).all() and abs(frame[column].sum() - 1) < 1e-9
    assert sorted(frame["prone_rank"]) == list(range(m))
    assert frame["prone"].sum() == frame.attrs["k"]
    v_h[data.draw(st.integers(0, m - 1))] = np.nan
    with pytest.raises(AvssError, match="not finite"):
        eavss_profile(v_h, s_h, v_t, s_t, family)
