"""The far tail's calibration: each run of surprises above its level teaches it once, by the
run's peak, whatever the onset rule reported."""

from __future__ import annotations

import dataclasses

import numpy as np

from detector.model import step_params
from detector.step import StreamingStep
from tests.unit.detector.conftest import keras_forecasts, make_recording, scaler_for
from tests.unit.detector.test_scorer_alone import CHANNELS, LAYOUT, SCORER, score
from tests.unit.detector.test_step import reference_scores, run_step

BURSTS = range(20, 140, 20)


def recurring_bursts(streams: int = 3, steps: int = 150):
    """Quiet random walks with a three-reading burst, climbing, every 20 readings: runs of
    surprises above 3 whose peak is not their first reading."""
    recording = make_recording(streams=streams, steps=steps, seed=31)
    spread = recording.values[:, :20].std(axis=1)
    for start in BURSTS:
        for offset, size in enumerate((8.0, 16.0, 24.0)):
            recording.values[:, start + offset, 0] += size * spread[:, 0]
    return recording


def test_recurring_bursts_score_as_the_reference(forecaster, scorer):
    """The step's surprises and flags follow the documented rules (float64 reference) on a
    stream whose far tail is learned from many runs."""
    _, model = forecaster
    recording = recurring_bursts()
    step = StreamingStep(step_params(model), scaler_for(recording), scorer)
    results, states = run_step(step, recording)
    mean, scale = keras_forecasts(model, step.scaler, recording)
    _, likelihood_ref, surprise_ref, flag_ref, _ = reference_scores(
        mean.astype(np.float64), scale.astype(np.float64),
        step.scaler.normalize(recording.values), scorer, recording.timestamps_ms,
        clip=step.scaler.clip)
    surprise = np.stack([r.surprise for r in results], axis=1)
    np.testing.assert_allclose(surprise, surprise_ref, atol=0.15)
    flags = np.stack([r.flag for r in results], axis=1)
    decided = np.abs(likelihood_ref - scorer.threshold) > 1e-5
    np.testing.assert_array_equal(flags[decided], flag_ref[decided])
    # The far tail learned runs: its rate is above its prior, one in 1,000 readings, by more
    # than one run's weight (about 1 / 1,000 here).
    assert np.all(states[-1][:, step.layout.fields["tail_rate"]] > 0.0022)


def test_the_far_tail_does_not_depend_on_what_the_onset_reported(forecaster, scorer):
    """The refractory time decides which readings are reported; the far tail's calibration,
    and with it every surprise and flag, learns from runs of surprises and must not move
    with it."""
    _, model = forecaster
    recording = recurring_bursts()
    outputs = []
    for refractory in (2, 400):
        config = dataclasses.replace(scorer, refractory=refractory)
        step = StreamingStep(step_params(model), scaler_for(recording), config)
        results, _ = run_step(step, recording)
        outputs.append((np.stack([r.surprise for r in results], axis=1),
                        np.stack([r.flag for r in results], axis=1),
                        np.stack([r.onset for r in results], axis=1)))
    (surprise_short, flag_short, onset_short), (surprise_long, flag_long, onset_long) = outputs
    # The two settings report differently (the test would prove nothing otherwise) ...
    assert (onset_short > 0).sum() > (onset_long > 0).sum()
    # ... and judge every reading alike, bit for bit.
    np.testing.assert_array_equal(surprise_short, surprise_long)
    np.testing.assert_array_equal(flag_short, flag_long)


def test_a_burst_with_a_short_lull_is_one_cluster_of_the_far_tail():
    """Spikes 6 readings apart, every 100 readings: each pair is one cluster (the lull is
    shorter than ``average_span``), so the far tail learns one exceedance per pair, when
    the pair is ``average_span`` readings behind, with the larger spike's excess."""
    rng = np.random.default_rng(4)
    streams, steps = 4, 1300
    readings = rng.normal(size=(streams, steps, CHANNELS))
    pairs = range(300, 1200, 100)
    for start in pairs:
        readings[:, start, 0] += 30.0
        readings[:, start + 6, 0] += 60.0
    hours = np.tile((np.arange(steps) // 60) % 24, (streams, 1))
    _, _, _, records = score(readings, hours)
    f = LAYOUT.fields
    rate = records[:, :, f["tail_rate"]][..., 0]
    for stream in range(streams):
        learned = np.flatnonzero(np.diff(rate[stream]) > 0.0) + 1
        for start in pairs:
            # Once per pair, after its second spike (at the lull it would make two clusters
            # of one burst), once its surprises, which the tests' short averages hold up for
            # a few readings, have been calm for ``average_span`` readings. (An ordinary
            # reading above 3 elsewhere is a cluster of its own.)
            near = learned[(learned > start) & (learned <= start + 6 + 3 * SCORER.average_span)]
            assert len(near) == 1, (stream, start, near)
            assert near[0] >= start + 6 + SCORER.average_span, (stream, start, near)
