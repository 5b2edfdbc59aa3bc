"""benchmarks/codec_speed.py times every codec it is asked for, icm's own learned codecs included."""

import importlib.util
import json
import sys

from conftest import REPO


def load_benchmark():
    spec = importlib.util.spec_from_file_location("codec_speed", REPO / "benchmarks" / "codec_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["codec_speed"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_jpeg_and_icm_omni_both_get_rows(tmp_path):
    # icm-omni's default sweep is only known once its weights are loaded: it used to yield no row and no note
    out = tmp_path / "speed.json"
    status = load_benchmark().main(["--codecs", "jpeg,icm-omni", "--size", "64", "--repeat", "1",
                                    "--anchor-points", "mid", "--learned-points", "low", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert status == 0, doc["skipped"]
    assert doc["skipped"] == []
    rows = {r["codec"]: r for r in doc["rows"]}
    assert sorted(rows) == ["icm-omni", "jpeg"]
    from icm.codecs import open_codec

    assert rows["icm-omni"]["rate"] in open_codec("icm-omni").default_rates()  # a trained gain level
    for row in rows.values():
        assert row["bpp"] > 0 and row["psnr"] > 15 and row["encode_ms"] > 0 and row["decode_ms"] > 0


def test_a_codec_without_rate_points_is_reported_not_dropped(tmp_path, capsys):
    out = tmp_path / "speed.json"
    status = load_benchmark().main(["--codecs", "jpeg", "--size", "32", "--repeat", "1",
                                    "--anchor-points", "low", "--json", str(out)])
    assert status == 0 and len(json.loads(out.read_text())["rows"]) == 1
    bench = load_benchmark()
    bench.select_rates = lambda codec, points: []
    status = bench.main(["--codecs", "jpeg", "--size", "32", "--repeat", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert status == 1 and doc["rows"] == []
    assert doc["skipped"][0]["codec"] == "jpeg" and "no rate point" in doc["skipped"][0]["reason"]
