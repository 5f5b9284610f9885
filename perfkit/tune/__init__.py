"""perfkit tune: Optuna search over config.pbtxt variants measured on a live server."""
