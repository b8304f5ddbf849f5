"""The built-in testbed: fictitious people in the TOFU layout (`people.py`) and the tiny model and
tokenizer that learn them on a CPU (`model.py`)."""
