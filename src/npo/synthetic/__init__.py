"""The paper's synthetic experiment (Section 4): the study (`experiment.py`) and its figures (`plots.py`)."""
