"""Training extras of wsdm (`pip install wsdm[train]`): prepare, teachers, distillation, merge, quantize."""
