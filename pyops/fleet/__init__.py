"""`pyops fleet`: every host and target under a bucket prefix, judged from the bucket
alone. `view` holds what is shown, `rules` judges (pure), `render` and `html` present;
pyops/actions/fleet.py reads the bucket, pyops/fleetindex.py is each host's index."""
