"""The `wsdm-train` commands, one module per step: prepare (:mod:`.data`), the training stages
(:mod:`.training`), merge and quantize (:mod:`.export`), all (:mod:`.pipeline`); the options they
share are in :mod:`.options`, and the options of merge and quantize that set one field each are
made from that field (:mod:`.field_options`)."""
