"""npo: unlearning for language models with Negative Preference Optimization."""
