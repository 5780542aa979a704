"""The demo's two lanes: work in a second process, its result, stages and errors brought back,
and the same figures whether the demo runs its lanes side by side or one after the other."""
import json
import os
import time

import pytest

from xpsvae.core.errors import LaneError, SpectraError
from xpsvae.evaluation.lane import Lane


# The lanes' targets: functions of this module, which the spawned child imports by name.
def _add(a, b, say):
    say("halfway")
    say("done")
    return {"sum": a + b, "list": [a, b]}


def _refuse(path, say):
    raise SpectraError(f"{path}: row 3, column 'flux': not a number")


def _die(say):
    os._exit(3)  # as a process killed for memory ends: without a word


def _sleep(seconds, say):
    time.sleep(seconds)


def test_a_lane_brings_back_its_result_and_stages():
    stages = []
    with Lane(_add, (2, 3), threads=1) as lane:
        assert lane.result(on_stage=stages.append) == {"sum": 5, "list": [2, 3]}
    assert stages == ["halfway", "done"]


def test_a_lane_raises_the_childs_error_with_its_traceback():
    with Lane(_refuse, ("stars.parquet",)) as lane:
        with pytest.raises(SpectraError, match="stars.parquet: row 3, column 'flux'") as caught:
            lane.result()
    assert "_refuse" in str(caught.value.__cause__)  # where in the child it was raised


def test_a_lane_that_dies_without_a_word_is_an_error_not_a_hang():
    with Lane(_die) as lane:
        with pytest.raises(LaneError, match="exit code 3.*--lanes 1"):
            lane.result()


def test_leaving_a_lane_early_stops_its_process():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="the work beside it failed"):
        with Lane(_sleep, (120,)) as lane:
            process = lane._process
            raise RuntimeError("the work beside it failed")
    assert not process.is_alive()
    assert time.perf_counter() - start < 60  # stopped, not waited for


def _without_timings(metrics: dict) -> dict:
    """metrics.json less what depends on the clock and on how the demo was run."""
    metrics.pop("hardware")
    text = json.dumps(metrics, sort_keys=True)
    return json.loads(text, object_hook=lambda d: {k: v for k, v in d.items()
                                                   if k not in ("wall_time_s", "fit_seconds")})


def test_the_demo_gives_the_same_figures_in_two_lanes_as_in_one(tmp_path):
    """Every step draws from its own seed and runs at the same thread count either way (one
    per lane: two lanes share two threads), and computations at a fixed thread count on a CPU
    repeat to the bit: so the two metrics.json must be equal, not merely close."""
    from xpsvae.evaluation.demo import run_demo
    runs = {}
    for lanes, threads in ((2, 2), (1, 1)):
        out = str(tmp_path / f"lanes{lanes}")
        metrics = run_demo(out, epochs=1, max_stars=1500, paper_recipe=False, progress=False,
                           threads=threads, label_epochs=2, lanes=lanes)
        assert metrics["hardware"]["lanes"] == lanes
        assert metrics["hardware"]["torch_threads"] == 1
        assert set(metrics["hardware"]["lane_seconds"]) == {"unsupervised", "labelled"}
        assert json.load(open(os.path.join(out, "metrics.json"))) == json.loads(
            json.dumps(metrics))
        runs[lanes] = metrics
    assert _without_timings(runs[2]) == _without_timings(runs[1])
    labels = runs[2]["labels"]
    # both lanes' baselines and high/low-alpha guesses, in the order the report lists them
    assert list(labels["baselines"]) == ["head_on_unsupervised_svae", "mlp_spectrum",
                                         "pca6_head", "cannon", "alpha_from_fe_h"]
    assert list(labels["alpha_classes"]["all_bins"]) == [
        "label_model", "unsupervised_svae", "label_model_labels", "fe_h_alone",
        "teff_logg_fe_h_alone"]
    assert labels["svae"]["unsupervised_test"] == runs[2]["svae"]["test"]
    assert labels["svae"]["training"]["wall_time_s"] > 0
    for name in ("labels_vs_apogee.png", "labels_coverage.png", "learning_curves.png"):
        assert os.path.getsize(tmp_path / "lanes2" / "figures" / name) > 10_000, name
    assert os.path.exists(tmp_path / "lanes2" / "labels" / "head.json")
    report = open(tmp_path / "lanes2" / "report.md").read()
    assert "### Beside the baselines" in report and "### High and low α" in report
    assert "with 1 thread in each of two processes side by side" in report


def test_the_demo_says_so_when_its_second_process_dies(tmp_path, monkeypatch, capsys):
    """A second process killed without a word (for memory, say) ends the demo with a
    one-line error that says what to do, not a traceback or a hang."""
    from xpsvae.cli import main
    from xpsvae.evaluation import demo
    monkeypatch.setattr(demo, "Lane", lambda target, args, threads: Lane(_die))
    monkeypatch.setattr(demo, "_unsupervised_lane",
                        lambda *args: ({}, ({}, {}), 0.0))  # this process's share: nothing
    assert main(["--quiet", "demo", "--out", str(tmp_path / "demo"), "--max-stars", "1500",
                 "--lanes", "2"]) == 2
    error = capsys.readouterr().err
    assert "xpsvae demo: error:" in error and "exit code 3" in error and "--lanes 1" in error
