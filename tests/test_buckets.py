"""Aspect-ratio buckets: the official tables, their derivations, closest-bucket rule and snapping."""

from __future__ import annotations

from fractions import Fraction

import pytest

from pixart.data.buckets import (
    ASPECT_RATIO_256,
    ASPECT_RATIO_256_TEST,
    ASPECT_RATIO_512,
    ASPECT_RATIO_512_TEST,
    ASPECT_RATIO_1024,
    ASPECT_RATIO_1024_TEST,
    TRAIN_ONLY_KEYS,
    bucket_table,
    closest_bucket,
    inference_buckets,
    parse_aspect,
    parse_size,
    ratio_in_range,
    ratio_range,
    snap_size,
)

DROPPED_AT_INFERENCE = {"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"}

# Values from the official repository (PixArt-alpha diffusion/data/datasets/utils.py).
EXPECTED_1024 = {
    "0.25": (512, 2048),
    "0.26": (512, 1984),
    "0.27": (512, 1920),
    "0.28": (512, 1856),
    "0.32": (576, 1792),
    "0.33": (576, 1728),
    "0.35": (576, 1664),
    "0.4": (640, 1600),
    "0.42": (640, 1536),
    "0.48": (704, 1472),
    "0.5": (704, 1408),
    "0.52": (704, 1344),
    "0.57": (768, 1344),
    "0.6": (768, 1280),
    "0.68": (832, 1216),
    "0.72": (832, 1152),
    "0.78": (896, 1152),
    "0.82": (896, 1088),
    "0.88": (960, 1088),
    "0.94": (960, 1024),
    "1.0": (1024, 1024),
    "1.07": (1024, 960),
    "1.13": (1088, 960),
    "1.21": (1088, 896),
    "1.29": (1152, 896),
    "1.38": (1152, 832),
    "1.46": (1216, 832),
    "1.67": (1280, 768),
    "1.75": (1344, 768),
    "2.0": (1408, 704),
    "2.09": (1472, 704),
    "2.4": (1536, 640),
    "2.5": (1600, 640),
    "2.89": (1664, 576),
    "3.0": (1728, 576),
    "3.11": (1792, 576),
    "3.62": (1856, 512),
    "3.75": (1920, 512),
    "3.88": (1984, 512),
    "4.0": (2048, 512),
}
KEYS_1024 = list(EXPECTED_1024)  # in the official order, which is by ratio
# A handful of official 512 and 256 entries, written out rather than computed.
EXPECTED_512 = {
    "0.25": (256, 1024),
    "0.26": (256, 992),
    "0.48": (352, 736),
    "1.0": (512, 512),
    "1.13": (544, 480),
    "2.89": (832, 288),
    "3.62": (928, 256),
    "4.0": (1024, 256),
}
EXPECTED_256 = {
    "0.25": (128, 512),
    "0.27": (128, 480),
    "0.32": (144, 448),
    "0.68": (208, 304),
    "1.0": (256, 256),
    "1.46": (304, 208),
    "3.11": (448, 144),
    "3.88": (496, 128),
    "4.0": (512, 128),
}


def test_1024_table_is_the_official_one():
    assert len(KEYS_1024) == 40
    assert sorted(KEYS_1024, key=float) == KEYS_1024
    assert list(ASPECT_RATIO_1024) == KEYS_1024
    assert dict(ASPECT_RATIO_1024) == EXPECTED_1024
    assert bucket_table(1024) == EXPECTED_1024
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in ASPECT_RATIO_1024.values())


def test_the_constant_table_is_read_only():
    with pytest.raises(TypeError):
        ASPECT_RATIO_1024["1.0"] = (1, 1)  # type: ignore[index]


@pytest.mark.parametrize(("resolution", "divisor", "table", "spot"), [
    (512, 2, ASPECT_RATIO_512, EXPECTED_512),
    (256, 4, ASPECT_RATIO_256, EXPECTED_256),
])  # fmt: skip
def test_512_and_256_are_exact_fractions_of_1024(resolution, divisor, table, spot):
    derived = bucket_table(resolution)
    assert derived == dict(table)
    assert list(derived) == KEYS_1024
    for key, (h, w) in EXPECTED_1024.items():
        assert derived[key] == (h // divisor, w // divisor)
        assert (h % divisor, w % divisor) == (0, 0)
    for key, size in spot.items():
        assert derived[key] == size


@pytest.mark.parametrize(("resolution", "table"), [
    (1024, ASPECT_RATIO_1024_TEST), (512, ASPECT_RATIO_512_TEST), (256, ASPECT_RATIO_256_TEST),
])  # fmt: skip
def test_inference_tables_drop_seven_keys(resolution, table):
    assert TRAIN_ONLY_KEYS == DROPPED_AT_INFERENCE
    assert len(table) == 33
    assert list(table) == [k for k in KEYS_1024 if k not in DROPPED_AT_INFERENCE]
    full = bucket_table(resolution)
    assert dict(table) == {k: full[k] for k in table}
    assert bucket_table(resolution, inference=True) == dict(table)


@pytest.mark.slow  # importing diffusers takes seconds
def test_inference_table_matches_diffusers_bins_when_installed():
    pipeline = pytest.importorskip("diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha")
    for ours, theirs in [
        (ASPECT_RATIO_1024_TEST, pipeline.ASPECT_RATIO_1024_BIN),
        (ASPECT_RATIO_512_TEST, pipeline.ASPECT_RATIO_512_BIN),
        (ASPECT_RATIO_256_TEST, pipeline.ASPECT_RATIO_256_BIN),
    ]:
        assert list(ours) == list(theirs)
        assert {k: tuple(int(v) for v in hw) for k, hw in theirs.items()} == dict(ours)


def test_small_resolutions_scale_and_round_to_the_multiple():
    t64 = bucket_table(64)  # scale 1/16, default multiple 4
    assert t64["1.0"] == (64, 64)
    assert t64["0.25"] == (32, 128)
    assert t64["0.57"] == (48, 84)  # 768/16 = 48, 1344/16 = 84
    assert t64["1.46"] == (76, 52)
    t32 = bucket_table(32)  # scale 1/32
    assert t32["0.57"] == (24, 44)  # 1344/32 = 42 -> 44 (tie rounds up)
    assert t32["0.94"] == (32, 32)  # 30 -> 32: neighbours may coincide at tiny sizes
    t48 = bucket_table(48)
    assert t48["1.0"] == (48, 48)
    assert t48["0.5"] == (32, 68)  # 33 -> 32, 66 -> 68 (tie rounds up)
    for resolution in (32, 48, 64, 96, 128):
        table = bucket_table(resolution)
        assert list(table) == KEYS_1024
        assert all(h % 4 == 0 and w % 4 == 0 and h > 0 and w > 0 for h, w in table.values())
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in bucket_table(64, multiple=16).values())
    assert bucket_table(64, multiple=16)["0.57"] == (48, 80)  # 84 -> 80
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in bucket_table(768).values())


def test_keys_subset_is_sorted_and_canonical():
    table = bucket_table(64, keys=["1.75", "1", "0.57"])
    assert list(table) == ["0.57", "1.0", "1.75"]
    assert table == {k: bucket_table(64)[k] for k in table}
    with pytest.raises(ValueError, match="not in the table"):
        bucket_table(64, keys=["0.75"])
    with pytest.raises(ValueError, match="not in the table"):
        bucket_table(1024, inference=True, keys=["2.89"])
    with pytest.raises(ValueError, match="not a number"):
        bucket_table(64, keys=["wide"])
    with pytest.raises(ValueError, match="at least one"):
        bucket_table(64, keys=[])


@pytest.mark.parametrize("bad", [{"resolution": 0}, {"resolution": 64, "multiple": 0}])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="positive"):
        bucket_table(**bad)


@pytest.mark.parametrize(("height", "width", "key", "size"), [
    (768, 1360, "0.57", (768, 1344)),
    (1080, 1920, "0.57", (768, 1344)),
    (600, 800, "0.72", (832, 1152)),
    (2000, 500, "4.0", (2048, 512)),
    (1024, 1024, "1.0", (1024, 1024)),
    (100, 1000, "0.25", (512, 2048)),  # beyond the range still has a closest bucket
])  # fmt: skip
def test_closest_bucket_examples(height, width, key, size):
    assert closest_bucket(height, width, ASPECT_RATIO_1024) == (key, size)


def test_closest_bucket_minimises_the_ratio_distance():
    table = bucket_table(1024)
    for h in range(100, 4000, 37):
        for w in (250, 640, 1000, 1999):
            key, _ = closest_bucket(h, w, table)
            best = min(abs(float(k) - h / w) for k in table)
            assert abs(float(key) - h / w) == best


def test_closest_bucket_tie_takes_the_first_key():
    table = bucket_table(1024, keys=["1.0", "2.0"])
    assert closest_bucket(3, 2, table)[0] == "1.0"  # 1.5 is equally far from 1.0 and 2.0


def test_ratio_range_is_inclusive_and_exact():
    table = bucket_table(1024)
    assert ratio_range(table) == (Fraction(1, 4), Fraction(4))
    assert ratio_in_range(512, 2048, table)
    assert ratio_in_range(2048, 512, table)
    assert ratio_in_range(1000, 1000, table)
    assert not ratio_in_range(511, 2048, table)
    assert not ratio_in_range(2049, 512, table)
    assert not ratio_in_range(4001, 1000, table)
    assert ratio_in_range(4000, 1000, table)
    subset = bucket_table(1024, keys=["0.57", "1.0", "1.75"])
    assert ratio_in_range(57, 100, subset)
    assert not ratio_in_range(56, 100, subset)
    assert ratio_in_range(175, 100, subset)
    assert not ratio_in_range(176, 100, subset)
    with pytest.raises(ValueError, match="positive"):
        ratio_in_range(0, 10, table)


def test_parse_aspect():
    assert parse_aspect("16:9") == (16.0, 9.0)
    assert parse_aspect(" 2.35:1 ") == (2.35, 1.0)
    for bad in ["16x9", "16", "a:b", "0:1", "1:-2", "1:2:3", "inf:1"]:
        with pytest.raises(ValueError, match="aspect"):
            parse_aspect(bad)


def test_an_extreme_aspect_snaps_to_the_extreme_bucket():
    """A ratio past about 4e16 (1e17:1), or one overflowing a float (1e308:1e-308), was as far from every key
    in floats, and the first key won: the widest bucket for the tallest request."""
    table = ASPECT_RATIO_1024_TEST
    tallest, widest = max(table, key=float), min(table, key=float)
    for tall in ("100:1", "1e16:1", "1e17:1", "1e300:1", "1e308:1e-308"):
        assert closest_bucket(*parse_aspect(tall), table)[0] == tallest, tall
    for wide in ("1:100", "1:1e17", "1e-308:1e308"):
        assert closest_bucket(*parse_aspect(wide), table)[0] == widest, wide


def test_snap_size_for_aspects_and_sizes():
    table = ASPECT_RATIO_1024_TEST
    assert snap_size(*parse_aspect("9:16"), table) == (768, 1344)  # 0.5625 -> 0.57
    assert snap_size(*parse_aspect("16:9"), table) == (1344, 768)  # 1.78 -> 1.75
    assert snap_size(*parse_aspect("1:1"), table) == (1024, 1024)
    assert snap_size(1000, 768, table) == (1152, 896)  # 1.302 -> 1.29
    assert snap_size(512, 512, table) == (1024, 1024)  # the bucket's scale, whatever the request's
    assert snap_size(1, 10, table) == (512, 2048)
    # 3.75 is a training-only bucket: the inference table snaps it to 4.0.
    assert snap_size(3.75, 1, ASPECT_RATIO_1024) == (1920, 512)
    assert snap_size(3.75, 1, table) == (2048, 512)
    assert snap_size(1000, 768, bucket_table(64)) == (72, 56)


@pytest.mark.parametrize(("text", "size"), [("512x768", (512, 768)), (" 24 X 44 ", (24, 44)), ("32×32", (32, 32))])
def test_parse_size_reads_height_then_width(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["512", "512x", "x768", "512*768", "a x b", "512x768x3", ""])
def test_parse_size_names_the_expected_form(text):
    with pytest.raises(ValueError, match=r"must look like 512x768 \(height x width\)"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0x8", "8x0", "00x00"])
def test_parse_size_refuses_a_zero_side(text):
    with pytest.raises(ValueError, match="each side of a size must be positive"):
        parse_size(text)


def test_a_run_on_prepared_data_generates_at_the_inference_buckets(tmp_path):
    """`pixart prepare` records the 40 training buckets; a run on that data drew a 3.75:1 request at
    1920x512, where the same weights loaded any other way (and official inference, and diffusers) draw the
    33-key table's 2048x512. A table of one's own sizes (the shapes world's) is kept whole."""
    import json

    from pixart.modelfolder import run_spec

    data, run = tmp_path / "data", tmp_path / "run"
    for folder in (data, run):
        folder.mkdir()
    recorded = {key: list(hw) for key, hw in bucket_table(1024).items()}
    dataset = {
        "text_encoder": {"kind": "minilm", "max_length": 16},
        "codec": {"kind": "pixels", "downsample": 1},
        "buckets": recorded,
    }
    (data / "dataset.json").write_text(json.dumps(dataset))
    (run / "config.json").write_text(json.dumps({"data": {"root": str(data)}}))
    buckets = run_spec(run).buckets
    assert buckets == {key: list(hw) for key, hw in ASPECT_RATIO_1024_TEST.items()}
    assert snap_size(3.75, 1, {key: tuple(hw) for key, hw in buckets.items()}) == (2048, 512)

    own = {"0.5": [32, 64], "1.0": [32, 32], "3.75": [16, 60]}  # 3.75 is one of the train-only keys by name
    assert inference_buckets(own) == own and inference_buckets(None) is None
