"""The offline demo: the whole pipeline on the built-in testbed (`run.py`) and its report (`report.py`)."""
