"""Inference: the predictor (each precision, merged adapters, the lean BERT forward), engines that serve many
adapters on one base, adapter sets, the one formatter of predictions, and streaming a corpus through a
predictor into a resumable, shardable JSON-lines file (``stream``)."""
