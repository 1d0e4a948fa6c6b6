"""The evaluation report, built from real metrics on real VCC 2016 utterances (SF1 <-> TF2)."""

from __future__ import annotations

import base64
import html
import json
import math
import re

import numpy as np
import pytest

from cyclegan_vc.audio import load_audio
from cyclegan_vc.features import FeatureConfig, WorldFeatures, analyze, synthesize
from cyclegan_vc.metrics import (
    MCD_CONVENTION,
    SYSTEMS,
    DirectionResults,
    EvaluationResults,
    Evaluator,
    UtteranceMetrics,
    conventions,
    mean_variance_convert,
)
from cyclegan_vc.report import ReportExample, format_table, markdown_tables, write_report
from cyclegan_vc.stats import compute_stats

RATE = 16000
CFG = FeatureConfig(f0_method="dio")  # dio keeps the analysis of a dozen clips to well under a second
SENTENCES = (200001, 200002)


@pytest.fixture(scope="module")
def built(vcc_file):
    """Results for A2B (SF1 -> TF2, four systems, every metric) and B2A (TF2 -> SF1, three systems,
    DNSMOS switched off so that missing values are exercised), plus one example."""
    load = lambda spk, n: load_audio(vcc_file(spk, n), RATE)[0]  # noqa: E731
    train = {"SF1": [load("SF1", n) for n in range(100001, 100005)],
             "TF2": [load("TF2", n) for n in range(100082, 100086)]}
    stats = {spk: compute_stats((f.f0, f.mcep) for f in map(lambda w: analyze(w, CFG), waves))
             for spk, waves in train.items()}
    evals = {spk: {n: load(spk, n) for n in SENTENCES} for spk in ("SF1", "TF2")}

    def mean_variance(src, tgt, wave, convert_f0=True):
        feats = analyze(wave, CFG)
        mcep, f0 = mean_variance_convert(feats.mcep, feats.f0, stats[src], stats[tgt])
        return synthesize(WorldFeatures(f0=f0 if convert_f0 else feats.f0, mcep=mcep, ap=feats.ap), CFG)

    def resynthesis(wave):
        return synthesize(analyze(wave, CFG), CFG)

    full = Evaluator(CFG)
    no_mos = Evaluator(CFG, naturalness=False, encoder=full.encoder)
    results = EvaluationResults(meta={"note": "test run", "sentences": list(SENTENCES)})
    converted = {}
    for direction, src, tgt, evaluator in (("A2B", "SF1", "TF2", full), ("B2A", "TF2", "SF1", no_mos)):
        systems = {
            "no_conversion": lambda n: evals[src][n],
            "mean_variance": lambda n: mean_variance(src, tgt, evals[src][n]),
            "world_resynthesis": lambda n: resynthesis(evals[tgt][n]),
        }
        if direction == "A2B":
            # No trained model exists in a unit test; the report does not care what produced the rows,
            # so the "cyclegan" slot holds another real conversion (MCEPs converted, F0 left as is).
            systems["cyclegan"] = lambda n: mean_variance(src, tgt, evals[src][n], convert_f0=False)
        d = DirectionResults(source=src, target=tgt)
        for name, make in systems.items():
            pairs = []
            for n in SENTENCES:
                wave = make(n)
                converted[direction, name, n] = wave
                pairs.append((str(n), evals[src][n], wave, evals[tgt][n]))
            d.systems[name] = evaluator.evaluate_pairs(
                pairs, target_refs=train[tgt], source_refs=train[src], desc=f"{direction} {name}", progress=False
            )
        results.directions[direction] = d

    n = SENTENCES[0]
    example = ReportExample(
        direction="A2B",
        id=str(n),
        sample_rate=RATE,
        waves={"source": evals["SF1"][n], "converted": converted["A2B", "cyclegan", n], "target": evals["TF2"][n]},
        f0={"source": full.features(evals["SF1"][n], RATE).f0, "target": full.features(evals["TF2"][n], RATE).f0},
    )
    return results, example, full


@pytest.fixture(scope="module")
def report(built, tmp_path_factory):
    results, example, evaluator = built
    out = tmp_path_factory.mktemp("report")
    written = write_report(out, results, title="Test evaluation SF1 <-> TF2", conventions=evaluator.conventions(),
                           examples=[example], feature_config=CFG)
    return out, written, results


def test_every_file_is_written_atomically(report):
    out, written, _ = report
    for rel in ("metrics.json", "summary.md", "report.html", "audio/A2B_200001_source.wav",
                "audio/A2B_200001_converted.wav", "audio/A2B_200001_target.wav"):
        assert rel in written and written[rel] == out / rel
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    wave, rate = load_audio(out / "audio/A2B_200001_target.wav", None)
    assert rate == RATE and len(wave) > RATE


def test_metric_values_are_plausible(report):
    _, _, results = report
    a2b = results.directions["A2B"].means()
    assert a2b["no_conversion"]["mcd_db"] > a2b["world_resynthesis"]["mcd_db"] + 2.0
    assert 6.0 < a2b["no_conversion"]["mcd_db"] < 9.5
    assert a2b["world_resynthesis"]["sim_to_target"] > a2b["no_conversion"]["sim_to_target"]
    assert a2b["no_conversion"]["sim_to_source"] > a2b["no_conversion"]["sim_to_target"]
    assert 2.5 < a2b["no_conversion"]["dnsmos_ovrl"] < 4.0
    assert math.isnan(results.directions["B2A"].means()["no_conversion"]["dnsmos_ovrl"])


def test_html_holds_conventions_tables_images_and_players(report):
    out, _, results = report
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert html.escape(MCD_CONVENTION) in page
    assert page.count('class="summary"') == 2  # one summary table per direction
    assert page.count("<table") >= 2 + 2 + 7  # summaries, per-utterance MCD, per-system details (+ meta)
    for system in SYSTEMS:
        assert f"<td>{system}</td>" in page
    # Bar charts (one per direction) and the example figure, embedded as PNG data URIs.
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    players = re.findall(r'<audio controls[^>]*src="([^"]+)"', page)
    assert players == ["audio/A2B_200001_source.wav", "audio/A2B_200001_converted.wav",
                       "audio/A2B_200001_target.wav"]
    assert all((out / p).is_file() for p in players)  # relative paths resolve inside the report folder
    row = results.directions["A2B"].systems["world_resynthesis"][0]
    assert f"<td>{row.mcd_db:.2f}</td>" in page  # per-utterance value in a table


def test_metrics_json_parses_and_round_trips(report):
    out, _, results = report
    data = json.loads((out / "metrics.json").read_text())
    assert data["format_version"] == 1 and data["conventions"]["MCD"] == MCD_CONVENTION
    assert data["meta"]["note"] == "test run" and "package_version" in data["meta"]
    block = data["directions"]["A2B"]["systems"]["no_conversion"]
    rows = results.directions["A2B"].systems["no_conversion"]
    assert [u["id"] for u in block["utterances"]] == ["200001", "200002"]
    assert block["utterances"][1]["mcd_db"] == rows[1].mcd_db
    assert block["summary"]["mcd_db"]["mean"] == pytest.approx(np.mean([r.mcd_db for r in rows]))
    assert block["summary"]["mcd_db"]["n"] == 2
    b2a = data["directions"]["B2A"]["systems"]["mean_variance"]
    assert b2a["utterances"][0]["dnsmos_ovrl"] is None and b2a["summary"]["dnsmos_ovrl"]["mean"] is None
    assert data["examples"][0]["audio"]["converted"] == "audio/A2B_200001_converted.wav"
    again = EvaluationResults.from_dict(data)
    for direction in ("A2B", "B2A"):
        np.testing.assert_equal(again.directions[direction].means(), results.directions[direction].means())


def test_summary_markdown_and_plain_table(report):
    out, _, results = report
    md = (out / "summary.md").read_text()
    assert md.startswith("# Test evaluation")
    assert MCD_CONVENTION in md and "### A2B: SF1 → TF2" in md and "### B2A: TF2 → SF1" in md
    assert markdown_tables(results).strip() in md
    for system in SYSTEMS:
        assert f"| `{system}` |" in md
    assert "[converted](audio/A2B_200001_converted.wav)" in md
    table = format_table(results)
    assert "A2B: SF1 -> TF2" in table and "B2A: TF2 -> SF1" in table
    for system in SYSTEMS:
        assert re.search(rf"^{system}\s", table, re.M)
    mcd_nc = results.directions["A2B"].means()["no_conversion"]["mcd_db"]
    assert f"{mcd_nc:.2f}" in table
    assert table.isascii()
    b2a_line = next(line for line in table.splitlines() if line.startswith("no_conversion") and "n/a" in line)
    assert b2a_line.endswith("n/a")  # DNSMOS was not computed for B2A


def test_format_table_orders_systems_and_accepts_the_dict_form():
    def row(uid, mcd):
        return UtteranceMetrics(uid, mcd, 100.0, 0.1, 0.8, 0.5, 3.0)

    results = EvaluationResults({"A2B": DirectionResults("SF1", "TM3", {
        "my_variant": [row("1", 5.0)],
        "world_resynthesis": [row("1", 3.0)],
        "cyclegan": [row("1", 6.0), row("2", 7.0)],
    })})
    lines = format_table(results.to_dict()).splitlines()
    names = [line.split()[0] for line in lines[3:6]]
    assert names == ["cyclegan", "world_resynthesis", "my_variant"]
    assert lines[3].split()[1:3] == ["2", "6.50"]  # n and mean MCD
    with pytest.raises(ValueError, match="directions"):
        EvaluationResults.from_dict({"A2B": {}})
    with pytest.raises(ValueError, match="unknown utterance metric"):
        UtteranceMetrics.from_dict({"id": "1", "mcd": 1.0})


def test_rewriting_a_report_replaces_it(report, built, tmp_path):
    results, _, evaluator = built
    first = write_report(tmp_path, results, title="first", conventions=conventions())
    second = write_report(tmp_path, results, title="second", conventions=conventions())
    assert set(first) == set(second) == {"metrics.json", "summary.md", "report.html"}
    assert json.loads((tmp_path / "metrics.json").read_text())["title"] == "second"
    assert "<h2>Examples</h2>" not in (tmp_path / "report.html").read_text()
