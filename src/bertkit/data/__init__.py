"""Pretraining data: corpus download and formatting, Google's instance creation, bertkit's shards,
TFRecord reading, and the dataset and collate function that training consumes."""
