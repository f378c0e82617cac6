"""Settings that were options once, were measured no better than the defaults, and were removed
(the measurements and the commits that made them: docs/results.md). Configs saved with them (a
run's config.yaml, a YAML file kept from before) still load, the setting ignored; given on the
command line, they are unknown keys."""

# train.py: an exponential moving average of the weights (a run saved with one loads its raw weights)
RETIRED_TRAIN_KEYS = ("train.num_workers", "train.ema_decay")

# eval.py / profile.py: which weights to load, and the beam's wariness and action-noise options
RETIRED_EVAL_KEYS = ("weights", "anchor_median", "obs_median", "act_window", "percentile",
                     "likelihood_weight", "support_penalty")
