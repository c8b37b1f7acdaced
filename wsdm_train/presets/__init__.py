"""YAML presets of the training configuration (package data, read by ``wsdm_train.config``)."""
