"""Inference: the predictor (each precision, merged adapters, the lean BERT forward), engines that serve many
adapters on one base, adapter sets, and the one formatter of predictions."""
