"""The `wsdm-train` commands, one module per step: prepare (:mod:`.data`), the training stages
(:mod:`.training`), merge and quantize (:mod:`.export`), all (:mod:`.pipeline`); the options they
share are in :mod:`.options`."""
