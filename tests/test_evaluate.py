"""`dac-codec evaluate`: the original evaluation's measures equal its loss classes on the same pairs, the library
measures equal the libraries called directly, honest anchors (an identical pair, noise at a known SNR, more noise
scores worse), and the command on a folder of mixed files with two models: the table, the summary with paired
differences, the report, a resume and a refusal of other settings."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from dac_codec.evaluation import parse_bitrates
from dac_codec.evaluation.metrics import OriginalMetrics, at_rate, f0_correlation, perplexity, pesq, stoi
from dac_codec.tools.cli import main
from dac_codec.tools.convert import write_model_folder

from conftest import ALSA, ROOT, one_line, tiny_model, tone

RELATIVE = 1e-4  # float32 spectrograms of one signal, summed in another order: the tolerance


@pytest.fixture(scope="module")
def speech():
    """A second and a half of real speech at 22.05 kHz, and a degraded copy (low-passed, with noise)."""
    audio, rate = soundfile.read(ROOT / "samples" / "speech.flac", dtype="float32")
    audio = audio[: int(1.5 * rate)]
    rng = np.random.default_rng(0)
    smooth = np.convolve(audio, np.ones(5) / 5, mode="same").astype(np.float32)
    return audio, (smooth + 0.01 * rng.standard_normal(audio.shape)).astype(np.float32), rate


def test_the_original_measures_equal_its_loss_classes(speech):
    from audiotools import AudioSignal
    from dac.nn.loss import L1Loss, MelSpectrogramLoss, MultiScaleSTFTLoss, SISDRLoss

    reference, estimate, rate = speech
    ours = OriginalMetrics()(reference, estimate, rate)
    for tag, target in (("22k", 22050), ("44k", 44100)):
        x, y = (AudioSignal(torch.from_numpy(at_rate(s, rate, target))[None, None], target)
                for s in (reference, estimate))
        theirs = {"mel": MelSpectrogramLoss()(x, y), "stft": MultiScaleSTFTLoss()(x, y),
                  "waveform": L1Loss()(x, y), "sisdr": -SISDRLoss()(x, y)}  # as the original's evaluate.py calls them
        for name, value in theirs.items():
            assert ours[f"{name}-{tag}"] == pytest.approx(value.item(), rel=RELATIVE), (name, tag)


def test_the_library_measures_equal_the_libraries_called_directly(speech):
    from pesq import pesq as pesq_direct
    from pystoi import stoi as stoi_direct

    reference, estimate, rate = speech
    assert stoi(reference, estimate, rate)["stoi"] == stoi_direct(reference, estimate, rate)
    x, y = at_rate(reference, rate, 16000), at_rate(estimate, rate, 16000)
    assert pesq(reference, estimate, rate)["pesq"] == pesq_direct(16000, x, y, "wb")


def test_visqol_equals_the_library_called_directly(speech):
    from visqol import VisqolApi

    from dac_codec.evaluation.metrics import Visqol

    reference, estimate, rate = speech
    ours = Visqol()(reference, estimate, rate)
    for mode, target in (("audio", 48000), ("speech", 16000)):
        api = VisqolApi()
        api.create(mode=mode, **({"use_lattice_model": False} if mode == "speech" else {}))
        x, y = (at_rate(s, rate, target).astype(np.float64) for s in (reference, estimate))
        # to 1e-9: the library's own reductions differ in the last bits from one call to the next in a process
        assert ours[f"visqol-{mode}"] == pytest.approx(api.measure_from_arrays(x, y, target).moslqo, rel=1e-9)
        assert 1 <= ours[f"visqol-{mode}"] <= 5


def test_an_identical_pair_scores_perfectly(speech):
    reference, _, rate = speech
    scores = OriginalMetrics()(reference, reference, rate)
    for tag in ("22k", "44k"):
        assert scores[f"mel-{tag}"] == 0 and scores[f"stft-{tag}"] == 0 and scores[f"waveform-{tag}"] == 0
        assert scores[f"sisdr-{tag}"] == float("inf")  # no residual at all
    assert stoi(reference, reference, rate)["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert pesq(reference, reference, rate)["pesq"] == pytest.approx(4.644, abs=1e-3)  # PESQ-WB's ceiling
    assert f0_correlation(reference, reference, rate)["f0-corr"] == pytest.approx(1.0)


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_at_a_known_snr_gives_that_si_sdr(snr, speech):
    reference, _, rate = speech
    reference = at_rate(reference, rate, 44100)  # the 44k score is measured at the signal's own rate
    noise = np.random.default_rng(1).standard_normal(reference.shape)
    noise -= noise.mean()
    centred = reference - reference.mean()
    noise *= np.sqrt((centred**2).sum() / (noise**2).sum() / 10 ** (snr / 10))
    scores = OriginalMetrics()(reference, (reference + noise).astype(np.float32), 44100)
    assert scores["sisdr-44k"] == pytest.approx(snr, abs=0.1)


def test_the_scores_move_the_right_way_as_noise_grows(speech):
    reference, _, rate = speech
    rng = np.random.default_rng(2)
    measured = []
    for level in (0.003, 0.03, 0.3):
        noisy = (reference + level * rng.standard_normal(reference.shape)).astype(np.float32)
        measured.append({**OriginalMetrics()(reference, noisy, rate), **stoi(reference, noisy, rate)})
    for name in ("mel-44k", "stft-44k", "waveform-44k"):
        assert measured[0][name] < measured[1][name] < measured[2][name], name
    for name in ("sisdr-44k", "stoi"):
        assert measured[0][name] > measured[1][name] > measured[2][name], name


def test_perplexity_counts_the_codes_in_use():
    assert perplexity(np.array([5, 5, 5, 5, 0, 0])) == pytest.approx(4.0)
    assert perplexity(np.array([9, 0, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("given, expected", [("all", [None]), ("1,2,all", [1, 2, None]), (" 4 , 8", [4, 8])])
def test_bitrates_parse(given, expected):
    assert parse_bitrates(given) == expected


@pytest.mark.parametrize("given", ["0", "two", "1,1", "1,,2"])
def test_bad_bitrates_are_refused(given):
    with pytest.raises(ValueError, match="--n-quantizers"):
        parse_bitrates(given)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two models (the base and a 'fine-tuned' one of other weights) on a folder of mixed files: speech, a stereo
    tone at another rate, a voice where alsa-utils has one, and a corrupt file."""
    root = tmp_path_factory.mktemp("evaluate")
    write_model_folder(tiny_model(), root / "base")
    write_model_folder(tiny_model(seed=7), root / "tuned")
    data = root / "data"
    data.mkdir()
    data.joinpath("speech.flac").write_bytes((ROOT / "samples" / "speech.flac").read_bytes())
    soundfile.write(data / "stereo.flac", tone(1.3, 22050, 2, 1), 22050)
    if ALSA.is_file():
        data.joinpath("voice.wav").write_bytes(ALSA.read_bytes())
    (data / "corrupt.flac").write_bytes(np.random.default_rng(3).bytes(3000))
    args = ["evaluate", str(data), "--model", str(root / "base"), "--model", str(root / "tuned"),
            "--n-quantizers", "1,all", "--output", str(root / "out")]
    return root, args, main(args)


def test_evaluate_writes_the_table_summary_and_report(run):
    root, _, status = run
    out = root / "out"
    assert status == 1  # the corrupt file failed; the others were done
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    inputs = sorted(p.name for p in (root / "data").iterdir())
    assert sorted({r["id"] for r in table}) == inputs and len(table) == len(inputs) * 2 * 2
    for row in table:
        if row["id"] == "corrupt.flac":
            assert row["error"].startswith("Could not read") and row["mel-44k"] is None
        else:
            assert row["error"] is None and np.isfinite(row["mel-44k"]) and row["mel-44k"] > 0
            assert row["bitrate_kbps"] == pytest.approx(50 * row["n_quantizers"] * 4 / 1000)  # 50 Hz, 16 codes
    csv = (out / "metrics.csv").read_text().splitlines()
    assert len(csv) == len(table) + 1 and "error" in csv[0] and "code_counts" not in csv[0]

    summary = json.loads((out / "summary.json").read_text())
    assert [(g["model_index"], g["bitrate"]) for g in summary["groups"]] == [(0, "1"), (0, "all"), (1, "1"),
                                                                               (1, "all")]
    good = [r for r in table if r["error"] is None]
    for group in summary["groups"]:
        rows = [r for r in good if (r["model_index"], r["bitrate"]) == (group["model_index"], group["bitrate"])]
        mel = group["scores"]["mel-44k"]
        assert mel["mean"] == pytest.approx(np.mean([r["mel-44k"] for r in rows]))
        assert mel["ci95"][0] <= mel["mean"] <= mel["ci95"][1] and mel["better"] == "lower"
        assert len(group["codebook_perplexity"]) == rows[0]["n_quantizers"]
        assert all(1 <= p <= 16 for p in group["codebook_perplexity"])
    paired = summary["paired"]
    assert [p["bitrate"] for p in paired] == ["1", "all"]
    for p in paired:
        by = {(r["model_index"], r["id"]): r["mel-44k"] for r in good if r["bitrate"] == p["bitrate"]}
        differences = [by[1, id] - by[0, id] for (index, id) in by if index == 0]
        assert p["scores"]["mel-44k"]["mean"] == pytest.approx(np.mean(differences))

    page = (out / "report.html").read_text()
    for name in ("scores.png", "worst-0.png", "best-1-all.wav", "median-0-input.wav"):
        assert f"report/{name}" in page and (out / "report" / name).is_file()


def test_a_rerun_resumes_and_other_settings_are_refused(run, capsys):
    root, args, _ = run
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "parts").iterdir()}
    assert main([*args, "--no-report"]) == 1
    inputs = len(list((root / "data").iterdir()))
    assert f"evaluate: 0 inputs measured, {inputs} already done, 1 failed" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out" / "parts").iterdir()} == before
    assert main([*args[:-4], "--n-quantizers", "2", "--output", str(root / "out")]) == 1
    assert "holds an evaluation with other settings (n_quantizers differ)" in one_line(capsys.readouterr().err)


LOADED = """els => Promise.all(els.map(a => a.readyState >= 1 ? [a.dataset.id, a.duration] : new Promise(done => {
    a.addEventListener('loadedmetadata', () => done([a.dataset.id, a.duration]));
    a.addEventListener('error', () => done([a.dataset.id, null]));
    a.load();
})))"""


def test_the_report_page_loads_in_a_real_browser(run):
    """Headless Chromium (Debian's, driven by Playwright) on file://: every image loads, every player loads its
    metadata with the duration of its input, and the console has no errors."""
    import shutil

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("needs Debian's chromium (scripts/setup_env.sh --test installs it where apt-get can)")
    from playwright.sync_api import sync_playwright

    root, _, _ = run
    seconds = {r["id"]: r["seconds"] for r in pq.read_table(root / "out" / "metrics.parquet").to_pylist()
               if r["seconds"] is not None}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((root / "out" / "report.html").as_uri(), wait_until="load", timeout=60_000)
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.complete, e.naturalWidth])")
            players = page.eval_on_selector_all("audio", LOADED)
        finally:
            browser.close()
    assert len(images) == 1 + 3 * 2  # the scores, and a spectrogram a model for each of three inputs
    assert all(complete and width > 0 for _, complete, width in images), images
    assert len(players) == 3 * 2 * 3  # three inputs, two models: the input and two bitrates each
    for id, duration in players:
        assert duration == pytest.approx(seconds[id], abs=1e-3), id  # a WAV's length, to the millisecond
    assert not errors, errors


def test_workers_give_the_rows_of_one_process(run, tmp_path):
    """Two CPU worker processes sharing the inputs (the original's measures alone, to keep it short): the same rows
    as the single-process run, the codes' counts exactly, the scores to float rounding (the processes run torch on
    other thread counts, whose oneDNN kernels sum in another order: audio a few ulps apart, which a log-ratio score
    such as SI-SDR turns into up to ~2e-5 relative; 1e-4 allows for that, far below any real difference)."""
    root, args, _ = run
    assert main([*args[:-1], str(tmp_path / "out"), "--workers", "2", "--measures", "original", "--no-report"]) == 1
    ours, single = (pq.read_table(folder / "metrics.parquet").to_pylist() for folder in (tmp_path / "out",
                                                                                          root / "out"))
    assert [(r["id"], r["model"], r["bitrate"], r["code_counts"], r["error"]) for r in ours] == \
        [(r["id"], r["model"], r["bitrate"], r["code_counts"], r["error"]) for r in single]
    for a, b in zip(ours, single):
        for column, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[column], rel=1e-4, abs=1e-7), column
