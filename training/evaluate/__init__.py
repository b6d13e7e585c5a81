"""Stage 2, evaluation: engines and baselines scored on simulated test splits against ground truth.

``tables`` (Table 5.1 / 3.1 at the working pixel), ``detector`` (Table 5.1 and the dose curve at the
detector's sampling, binning included), ``fov_detector`` (Table 3.1 there), ``images`` (someone else's
clean images), ``likelihood_study`` (Fig. 3.4), with ``metrics``, ``baselines``, ``regions``,
``markdown`` and ``figure``. Reads ``training.sim``'s data sets and models; imports nothing from
``train`` or above (training validates with ``metrics``, the reason it sits above this stage).
"""
