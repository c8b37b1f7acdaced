"""Model folders changed on disk: dequantizing integer checkpoints and writing FP8 ones.

``checkpoint`` reads what a folder holds, ``dequantize`` turns stored integers back into weights,
``fp8`` writes and checks FP8 weights, ``convert`` ties them into `wsdm-serve convert`, and
``precision`` decides how an engine runs a folder under ``--precision``.
"""
